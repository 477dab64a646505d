package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// internalEnv are variables ptun reads that a user never sets.
var internalEnv = map[string]string{
	readyFDEnv: "set by ptun for the daemon it starts",
}

// envLike is what an environment variable's name looks like when it is
// not a literal argument of Getenv (a table of names, a helper's argument).
var envLike = regexp.MustCompile(`^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$`)

// TestUsageListsEveryEnvVar: every environment variable that the code
// linked into ptun reads is named in `ptun -h`. The names come from the
// source: the argument of each os.Getenv, os.LookupEnv or syscall.Getenv
// call (a string literal, or a string constant of that package or of an
// imported one); where the argument is anything else (a variable), every
// literal in that file that looks like a variable's name.
func TestUsageListsEveryEnvVar(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f",
		`{{if and .Module .Module.Main}}{{range .GoFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{end}}`, ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	files := strings.Fields(string(out))
	if len(files) < 20 {
		t.Fatalf("go list found only %d files: %v", len(files), files)
	}

	type parsed struct {
		pkg  string
		file *ast.File
	}
	fset := token.NewFileSet()
	var all []parsed
	consts := map[string]string{} // "pkg.Name" -> value, for string constants
	for _, path := range files {
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		pkg := f.Name.Name
		all = append(all, parsed{pkg, f})
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						if s, ok := stringLit(vs.Values[i]); ok {
							consts[pkg+"."+name.Name] = s
						}
					}
				}
			}
		}
	}

	found := map[string]string{} // name -> where it is read
	for _, p := range all {
		dynamic := false
		ast.Inspect(p.file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 1 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "Getenv" && sel.Sel.Name != "LookupEnv") {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); !ok || (x.Name != "os" && x.Name != "syscall") {
				return true
			}
			where := fset.Position(call.Pos()).String()
			var name string
			switch a := call.Args[0].(type) {
			case *ast.BasicLit:
				name, ok = stringLit(a)
			case *ast.Ident:
				name, ok = consts[p.pkg+"."+a.Name]
			case *ast.SelectorExpr:
				if x, isIdent := a.X.(*ast.Ident); isIdent {
					name, ok = consts[x.Name+"."+a.Sel.Name]
				}
			default:
				ok = false
			}
			if ok {
				found[name] = where
			} else {
				dynamic = true
			}
			return true
		})
		if dynamic {
			ast.Inspect(p.file, func(n ast.Node) bool {
				if s, ok := stringLit(n); ok && envLike.MatchString(s) {
					found[s] = fset.Position(n.Pos()).String()
				}
				return true
			})
		}
	}
	// The scan must see the variables read through constants and tables.
	for _, name := range []string{"PTUN_IPC", "PTUN_DISABLE_TUN_OFFLOAD", "PTUN_REKEY_TIMEOUT", "PTUN_DISABLE_AQM", "LOG_LEVEL", "GOMAXPROCS"} {
		if _, ok := found[name]; !ok {
			t.Errorf("the scan did not find %s; found %v", name, found)
		}
	}

	var names []string
	for name := range found {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, ok := internalEnv[name]; ok {
			continue
		}
		named := regexp.MustCompile(`(^|[^A-Z0-9_])` + regexp.QuoteMeta(name) + `([^A-Z0-9_]|$)`)
		if !named.MatchString(usage) {
			t.Errorf("%s (read at %s) is not in the usage text", name, found[name])
		}
	}
	t.Logf("environment variables read: %v", names)
}

// stringLit returns the value of a string literal node.
func stringLit(n ast.Node) (string, bool) {
	lit, ok := n.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}
