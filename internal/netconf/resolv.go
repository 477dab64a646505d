package netconf

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// The resolver configuration, written to a resolv.conf file. The file (or
// the symbolic link that stood at its path) is saved in the record and put
// back by Undo, unless someone else has rewritten it meanwhile.

// ResolvRecord is what applyResolv replaced.
type ResolvRecord struct {
	Path     string `json:"path"`
	Original []byte `json:"original,omitempty"` // the file's bytes before (none if there was none)
	Existed  bool   `json:"existed"`
	Link     string `json:"link,omitempty"` // the symbolic link that stood at Path, if one did
	Written  []byte `json:"written"`        // what Apply wrote
}

// resolvContent is the resolv.conf for p.
func resolvContent(p *Plan) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# written by ptun for %s; the previous file comes back when the tunnel goes down\n", p.Interface)
	for _, d := range p.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", d.WithZone(""))
	}
	if len(p.Search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(p.Search, " "))
	}
	return b.Bytes()
}

func applyResolv(p *Plan, rec *Record, path string) error {
	if len(p.DNS) == 0 && len(p.Search) == 0 {
		return nil
	}
	r := &ResolvRecord{Path: path, Written: resolvContent(p)}
	if fi, err := os.Lstat(path); err == nil {
		r.Existed = true
		if fi.Mode()&os.ModeSymlink != 0 {
			if r.Link, err = os.Readlink(path); err != nil {
				return fmt.Errorf("netconf: %w", err)
			}
		} else if r.Original, err = os.ReadFile(path); err != nil {
			return fmt.Errorf("netconf: %w", err)
		}
	} else if !os.IsNotExist(err) {
		return fmt.Errorf("netconf: %w", err)
	}
	// Recorded before the write: a crash after it still restores.
	rec.Resolv = r
	if err := writeAtomic(path, r.Written); err != nil {
		rec.Resolv = nil
		return err
	}
	return nil
}

func restoreResolv(r *ResolvRecord) error {
	cur, err := os.ReadFile(r.Path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("netconf: %w", err)
	}
	if err != nil || !bytes.Equal(cur, r.Written) {
		return fmt.Errorf("%w: %s was changed by someone else since ptun wrote it; left as it is", ErrNotApplied, r.Path)
	}
	switch {
	case r.Link != "":
		tmp := r.Path + ".ptun-restore"
		os.Remove(tmp)
		if err := os.Symlink(r.Link, tmp); err != nil {
			return fmt.Errorf("netconf: %w", err)
		}
		return os.Rename(tmp, r.Path)
	case r.Existed:
		return writeAtomic(r.Path, r.Original)
	default:
		return os.Remove(r.Path)
	}
}

// writeAtomic replaces path (a file, or a symbolic link, not its target)
// with a file holding b, mode 0644.
func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".ptun-resolv-*")
	if err != nil {
		return fmt.Errorf("netconf: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("netconf: %w", err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("netconf: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("netconf: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		// A resolv.conf that is a mount point (a container's, or the one
		// `ip netns exec` binds) cannot be replaced: write it in place.
		if errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EXDEV) {
			return os.WriteFile(path, b, 0o644)
		}
		return fmt.Errorf("netconf: %w", err)
	}
	return nil
}
