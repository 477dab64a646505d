package ctl

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pair returns two running Conns joined by a socketpair.
func pair(t testing.TB, ha, hb Handler) (*Conn, *Conn) {
	t.Helper()
	fa, fb, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	a, err := FromFile(fa, ha)
	if err != nil {
		t.Fatal(err)
	}
	b, err := FromFile(fb, hb)
	if err != nil {
		t.Fatal(err)
	}
	go a.Run()
	go b.Run()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestCallReply(t *testing.T) {
	a, _ := pair(t, nil, func(req *Msg) *Msg {
		switch req.Op {
		case "echo":
			return &Msg{Text: strings.ToUpper(req.Text)}
		case "busy":
			return Fail(syscall.EADDRINUSE)
		}
		return Fail(errors.New("unknown op " + req.Op))
	})
	rep, err := a.Call(ctx(t), &Msg{Op: "echo", Text: "hello"})
	if err != nil || rep.Text != "HELLO" {
		t.Fatalf("echo: %+v, %v", rep, err)
	}
	if _, err := a.Call(ctx(t), &Msg{Op: "busy"}); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("busy: %v, want EADDRINUSE in the chain", err)
	}
	if _, err := a.Call(ctx(t), &Msg{Op: "nope"}); err == nil || !strings.Contains(err.Error(), "unknown op nope") {
		t.Fatalf("nope: %v", err)
	}
}

func TestNoHandlerIsEOPNOTSUPP(t *testing.T) {
	a, _ := pair(t, nil, nil)
	if _, err := a.Call(ctx(t), &Msg{Op: "x"}); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Fatalf("got %v, want EOPNOTSUPP", err)
	}
}

// TestFilesTravel passes a pipe's write end both ways and checks that the
// received descriptor is the same pipe.
func TestFilesTravel(t *testing.T) {
	a, _ := pair(t, nil, func(req *Msg) *Msg {
		if len(req.Files) != 1 {
			return Fail(errors.New("want one file"))
		}
		defer req.Files[0].Close()
		if _, err := req.Files[0].Write([]byte("via b")); err != nil {
			return Fail(err)
		}
		r, w, err := os.Pipe()
		if err != nil {
			return Fail(err)
		}
		w.Write([]byte("from b"))
		w.Close()
		return &Msg{Files: []*os.File{r}}
	})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rep, err := a.Call(ctx(t), &Msg{Op: "file", Files: []*os.File{w}})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, _ := r.Read(buf)
	if string(buf[:n]) != "via b" {
		t.Fatalf("read %q through the passed fd", buf[:n])
	}
	if len(rep.Files) != 1 {
		t.Fatalf("reply carried %d files", len(rep.Files))
	}
	got, _ := io.ReadAll(rep.Files[0])
	rep.Files[0].Close()
	if string(got) != "from b" {
		t.Fatalf("read %q from the returned fd", got)
	}
}

// TestPeerGone checks that a Call waiting on a side that goes away returns
// ErrClosed, and later Calls too.
func TestPeerGone(t *testing.T) {
	block := make(chan struct{})
	a, b := pair(t, nil, func(req *Msg) *Msg { <-block; return nil })
	defer close(block)
	errc := make(chan error, 1)
	go func() { _, err := a.Call(ctx(t), &Msg{Op: "slow"}); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	b.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("got %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Call did not return when the other side closed")
	}
	<-a.Done()
	if _, err := a.Call(ctx(t), &Msg{Op: "x"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Call after close: %v", err)
	}
	if a.Err() != io.EOF {
		t.Fatalf("Err() = %v, want io.EOF", a.Err())
	}
}

// rawPeer returns a Conn running on one end and the raw other end.
func rawPeer(t testing.TB) (*Conn, *os.File) {
	t.Helper()
	fa, fb, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	a, err := FromFile(fa, func(*Msg) *Msg { return nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); fb.Close() })
	return a, fb
}

func TestHostileFrames(t *testing.T) {
	big := make([]byte, 4)
	binary.BigEndian.PutUint32(big, MaxFrame+1)
	for name, raw := range map[string][]byte{
		"oversize":   big,
		"not json":   append([]byte{0, 0, 0, 3}, "{{{"...),
		"cut short":  append([]byte{0, 0, 0, 50}, `{"op":"x"`...),
		"wrong type": append([]byte{0, 0, 0, 10}, `{"op":123}`...),
	} {
		t.Run(name, func(t *testing.T) {
			a, raw0 := rawPeer(t)
			raw0.Write(raw)
			if name == "cut short" {
				raw0.Close()
			}
			done := make(chan error, 1)
			go func() { done <- a.Run() }()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("Run returned nil")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a hostile frame did not end the connection")
			}
		})
	}
}

// FuzzRead feeds arbitrary bytes to a Conn: it must end or keep reading,
// never panic, and never hand out more than MaxFiles files.
func FuzzRead(f *testing.F) {
	f.Add([]byte{0, 0, 0, 12, '{', '"', 'o', 'p', '"', ':', '"', 'g', 'e', 't', '"', '}'})
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte(`{"op":"set","text":"private_key=00\n"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fa, fb, err := Pair()
		if err != nil {
			t.Fatal(err)
		}
		defer fb.Close()
		c, err := FromFile(fa, func(m *Msg) *Msg {
			if len(m.Files) > MaxFiles {
				panic("too many files")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() { fb.Write(data); fb.Close() }()
		done := make(chan struct{})
		go func() { c.Run(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not end after the writer closed")
		}
	})
}
