// Package systemd holds ptun's systemd units (see docs/gateway.md and
// docs/client.md). The tests check them against systemd and against ptun:
// systemd-analyze verify accepts every line, the sandbox keeps its
// exposure score, and every command a unit runs is a ptun command with
// flags ptun accepts. (systemd is not PID 1 where the tests run, so the
// units are not started here.)
package systemd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptun-vpn/ptun/internal/testenv"
)

// units are the unit files here, and the name each is verified as (a
// template as one instance of it).
var units = map[string]string{
	"ptun-gateway.service": "ptun-gateway.service",
	"ptun-client@.service": "ptun-client@work.service",
}

// instance is the instance name %i stands for in the tests.
const instance = "work"

// binary is where the units expect ptun (docs: go build -o /usr/local/bin/ptun).
const binary = "/usr/local/bin/ptun"

// ptunBuilt is the ptun binary built for the tests (by TestMain).
var ptunBuilt string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ptun-units-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ptunBuilt = filepath.Join(dir, "ptun")
	build := exec.Command("go", "build", "-o", ptunBuilt, "github.com/ptun-vpn/ptun/cmd/ptun")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building ptun: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestUnitFiles: the folder holds exactly the units the tests know.
func TestUnitFiles(t *testing.T) {
	files, err := filepath.Glob("*.service")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(units) {
		t.Errorf("unit files %v, want %d: add a new one to units", files, len(units))
	}
	for _, f := range files {
		if _, ok := units[f]; !ok {
			t.Errorf("%s is not in units: the tests do not check it", f)
		}
	}
}

// root makes a file system root for systemd-analyze --root: the units in
// etc/systemd/system, a copy of the system's own units (the targets the
// units name) in usr/lib/systemd/system, and ptun at usr/local/bin/ptun,
// the path the units run, so that verify checks the units as they are
// installed. replace, if not nil, rewrites each unit's text.
func root(t *testing.T, replace func(string) string) string {
	t.Helper()
	r := t.TempDir()
	var system string
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if fi, err := os.Stat(filepath.Join(d, "multi-user.target")); err == nil && !fi.IsDir() {
			system = d
			break
		}
	}
	if system == "" {
		testenv.SkipOrFail(t, "no systemd unit folder with multi-user.target (Debian package systemd)")
	}
	for _, d := range []string{"etc/systemd/system", "usr/local/bin"} {
		if err := os.MkdirAll(filepath.Join(r, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The system's units alias each other with absolute symbolic links
	// (/lib/systemd/system/…), which systemd-analyze follows inside root.
	if err := os.Symlink("usr/lib", filepath.Join(r, "lib")); err != nil {
		t.Fatal(err)
	}
	copyTree(t, system, filepath.Join(r, "usr/lib/systemd/system"))
	if err := os.Link(ptunBuilt, filepath.Join(r, binary)); err != nil {
		copyFile(t, ptunBuilt, filepath.Join(r, binary), 0o755)
	}
	for file := range units {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if replace != nil {
			text = replace(text)
		}
		if err := os.WriteFile(filepath.Join(r, "etc/systemd/system", file), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// copyTree copies the folder src to dst: folders, regular files, and
// symbolic links as links.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(to, 0o755)
		case d.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case d.Type().IsRegular():
			copyFile(t, path, to, 0o644)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// analyze runs systemd-analyze with args and returns its output and error.
func analyze(t *testing.T, args ...string) (string, error) {
	t.Helper()
	path := testenv.RequireTool(t, "systemd-analyze", "systemd")
	out, err := exec.Command(path, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestVerify: systemd-analyze verify accepts each unit, installed with ptun
// at its path, without a word: an unknown or misspelt directive, a bad
// value, a missing binary or a dependency on a unit that does not exist
// would each be said. The check itself is checked: a misspelt directive and
// a missing binary are reported.
func TestVerify(t *testing.T) {
	r := root(t, nil)
	for file, name := range units {
		if out, err := analyze(t, "verify", "--root="+r, name); err != nil || out != "" {
			t.Errorf("systemd-analyze verify %s: %v\n%s", file, err, out)
		}
	}

	bad := root(t, func(s string) string { return strings.Replace(s, "ProtectSystem=", "ProtectSystm=", 1) })
	if out, _ := analyze(t, "verify", "--root="+bad, "ptun-gateway.service"); !strings.Contains(out, "ProtectSystm") {
		t.Errorf("verify did not report a misspelt directive: %q", out)
	}
	if err := os.Remove(filepath.Join(bad, binary)); err != nil {
		t.Fatal(err)
	}
	if out, err := analyze(t, "verify", "--root="+bad, "ptun-gateway.service"); err == nil || !strings.Contains(out, binary) {
		t.Errorf("verify did not report a missing %s: %v %q", binary, err, out)
	}
}

// maxExposure bounds systemd-analyze security's score of each unit, on its
// 0-100 scale (it shows tenths: 3.8 is 38). The units score 38 with
// systemd 252; the bound leaves room for the scoring of other systemd
// versions and fails if the sandbox loses a part of any weight.
const maxExposure = 45

// TestExposure: each unit's sandbox scores at most maxExposure, and the
// same unit without its sandbox scores more (so the bound means something).
func TestExposure(t *testing.T) {
	r := root(t, nil)
	for file, name := range units {
		out, err := analyze(t, "security", "--offline=yes", "--root="+r, fmt.Sprintf("--threshold=%d", maxExposure), name)
		if err != nil {
			t.Errorf("systemd-analyze security %s: %v (over %d, or not understood)\n%s", file, err, maxExposure, lastLine(out))
		} else {
			t.Logf("%s", lastLine(out))
		}
	}
	bare := root(t, func(s string) string {
		head, _, _ := strings.Cut(s, "# Privileges.")
		return head + "\n[Install]\nWantedBy=multi-user.target\n"
	})
	if out, err := analyze(t, "security", "--offline=yes", "--root="+bare, fmt.Sprintf("--threshold=%d", maxExposure), "ptun-gateway.service"); err == nil {
		t.Errorf("the gateway unit without its sandbox scores within %d too: %s", maxExposure, lastLine(out))
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestCommands: every Exec line of every unit runs ptun at /usr/local/bin
// with a command and flags that ptun accepts: the same arguments with -h
// added print that command's usage and exit 0 (an unknown command or flag
// exits 2). A unit that runs up also runs down for the same profile after
// it stops, and a failing down does not fail the unit.
func TestCommands(t *testing.T) {
	for file := range units {
		t.Run(file, func(t *testing.T) {
			execs, err := execLines(file)
			if err != nil {
				t.Fatal(err)
			}
			if len(execs["ExecStart"]) != 1 {
				t.Fatalf("%d ExecStart lines, want 1", len(execs["ExecStart"]))
			}
			for key, lines := range execs {
				for _, l := range lines {
					if l.argv[0] != binary {
						t.Errorf("%s=%s runs %s, not %s", key, l.text, l.argv[0], binary)
						continue
					}
					checkCommand(t, key+"="+l.text, l.argv[1:])
				}
			}
			start := execs["ExecStart"][0].argv[1:]
			if start[0] == "up" {
				var down bool
				for _, l := range execs["ExecStopPost"] {
					if len(l.argv) >= 3 && l.argv[1] == "down" && l.argv[2] == start[1] && l.ignoreFailure {
						down = true
					}
				}
				if !down {
					t.Errorf("runs ptun up %s, but no ExecStopPost=-%s down %s", start[1], binary, start[1])
				}
			}
		})
	}
}

// checkCommand runs ptun with args and -h, and fails t unless it prints the
// usage of args' command and exits 0.
func checkCommand(t *testing.T, what string, args []string) {
	t.Helper()
	if len(args) == 0 {
		t.Errorf("%s: no ptun command", what)
		return
	}
	cmd := exec.Command(ptunBuilt, append(append([]string(nil), args...), "-h")...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil || stderr.Len() != 0 {
		t.Errorf("%s: ptun %s -h: %v\n%s", what, strings.Join(args, " "), err, stderr.String())
		return
	}
	if want := "Usage: ptun " + args[0]; !strings.HasPrefix(stdout.String(), want) {
		t.Errorf("%s: ptun %s -h printed no %q but:\n%s", what, strings.Join(args, " "), want, stdout.String())
	}
}

// execLine is one Exec line of a unit.
type execLine struct {
	text          string   // as written, prefixes included
	argv          []string // specifiers expanded
	ignoreFailure bool     // the "-" prefix
}

// execLines reads the Exec lines of file's [Service] section, by key.
// It knows the syntax these units use: comments, sections, Key=Value,
// command prefixes, quotes, and the specifiers %i and %%; anything else
// is an error, so that a unit using more makes the test grow with it.
func execLines(file string) (map[string][]execLine, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string][]execLine{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
			continue
		case strings.HasSuffix(line, `\`):
			return nil, fmt.Errorf("%s:%d: a continued line: teach execLines", file, n)
		case line[0] == '[':
			section = strings.Trim(line, "[]")
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: not Key=Value: %q", file, n, line)
		}
		if section != "Service" || !strings.HasPrefix(key, "Exec") {
			continue
		}
		if value == "" { // resets the list
			delete(out, key)
			continue
		}
		l := execLine{text: value}
		cmd := strings.TrimLeft(value, "-@:+!")
		l.ignoreFailure = strings.Contains(value[:len(value)-len(cmd)], "-")
		if strings.Contains(value[:len(value)-len(cmd)], "@") {
			return nil, fmt.Errorf("%s:%d: the @ prefix: teach execLines", file, n)
		}
		if l.argv, err = splitCommand(cmd); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", file, n, err)
		}
		out[key] = append(out[key], l)
	}
	return out, sc.Err()
}

// splitCommand splits a command line into words as systemd does for these
// units: by spaces, with "double" or 'single' quoted words, and expands %i
// and %%.
func splitCommand(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '"' || c == '\''):
			quote, inWord = c, true
		case quote == 0 && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\\':
			return nil, errors.New("a backslash: teach splitCommand")
		case c == '%':
			if i+1 == len(s) {
				return nil, errors.New("a lone % at the end")
			}
			i++
			switch s[i] {
			case 'i':
				cur.WriteString(instance)
			case '%':
				cur.WriteByte('%')
			default:
				return nil, fmt.Errorf("the specifier %%%c: teach splitCommand", s[i])
			}
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, errors.New("an unclosed quote")
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		return nil, errors.New("an empty command")
	}
	return words, nil
}

// TestSplitCommand pins the parser the command check rests on.
func TestSplitCommand(t *testing.T) {
	for in, want := range map[string]string{
		`/usr/local/bin/ptun up %i --foreground`:  "/usr/local/bin/ptun|up|work|--foreground",
		`/bin/sh -c "echo %i  done" '100%%'`:      "/bin/sh|-c|echo work  done|100%",
		`  /usr/local/bin/ptun   down   %i  `:     "/usr/local/bin/ptun|down|work",
		`/usr/local/bin/ptun gateway run ""`:      "/usr/local/bin/ptun|gateway|run|",
		`/usr/local/bin/ptun --state=/var/lib/%i`: "/usr/local/bin/ptun|--state=/var/lib/work",
	} {
		got, err := splitCommand(in)
		if err != nil || strings.Join(got, "|") != want {
			t.Errorf("splitCommand(%q) = %q, %v; want %q", in, strings.Join(got, "|"), err, want)
		}
	}
	for _, in := range []string{`ptun %I`, `ptun "open`, `ptun a\ b`, ``, `%`} {
		if got, err := splitCommand(in); err == nil {
			t.Errorf("splitCommand(%q) = %q, want an error", in, got)
		}
	}
}
