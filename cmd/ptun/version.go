package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// runVersion is `ptun version`: the module version, the commit it was built
// from (when the build knows it) and the Go version.
func runVersion(args []string) error {
	fs := newFlagSet("version")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	version, commit, dirty := "(devel)", "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	fmt.Fprintf(stdout, "ptun %s", version)
	if commit != "" {
		if len(commit) > 12 {
			commit = commit[:12]
		}
		fmt.Fprintf(stdout, " (commit %s", commit)
		if dirty {
			fmt.Fprint(stdout, ", modified")
		}
		fmt.Fprint(stdout, ")")
	}
	fmt.Fprintf(stdout, " %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
