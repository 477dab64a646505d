package ctl

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/testenv"
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
	testenv.WaitBlocked(t, "ctl.(*Conn).Call")
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

// openFDs counts this process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// TestRequestFilesClosed floods a handler that takes no descriptor with
// notices and requests that each carry MaxFiles of them: none may stay
// open on the receiving side.
func TestRequestFilesClosed(t *testing.T) {
	handled := make(chan struct{}, 1024)
	var keep []*os.File
	var keepMu = make(chan struct{}, 1)
	a, _ := pair(t, nil, func(req *Msg) *Msg {
		defer func() { handled <- struct{}{} }()
		if req.Op == "take" {
			keepMu <- struct{}{}
			keep = append(keep, req.Files...)
			<-keepMu
			req.Files = nil
		}
		return nil
	})
	f, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := make([]*os.File, MaxFiles)
	for i := range files {
		files[i] = f // the same fd repeated: the receiver still gets MaxFiles new ones
	}
	before := openFDs(t)
	const rounds = 200
	for i := range rounds {
		if i%2 == 0 {
			if err := a.Send(&Msg{Op: "log", Text: "x", Files: files}); err != nil {
				t.Fatal(err)
			}
			<-handled
		} else if _, err := a.Call(ctx(t), &Msg{Op: "mtu", Files: files}); err != nil {
			t.Fatal(err)
		} else {
			<-handled
		}
	}
	// The last request's descriptors are closed just after its handler
	// returned: wait (bounded) for the count to settle.
	after := openFDs(t)
	for deadline := time.Now().Add(5 * time.Second); after > before+2 && time.Now().Before(deadline); after = openFDs(t) {
		time.Sleep(time.Millisecond)
	}
	if after > before+2 {
		t.Fatalf("%d descriptors open after %d requests with %d each, %d before: the receiver leaks them", after, rounds, MaxFiles, before)
	}
	// A handler that takes them owns them: they stay open until it closes them.
	if _, err := a.Call(ctx(t), &Msg{Op: "take", Files: files[:2]}); err != nil {
		t.Fatal(err)
	}
	<-handled
	if len(keep) != 2 {
		t.Fatalf("handler kept %d files, want 2", len(keep))
	}
	for _, k := range keep {
		if _, err := k.Stat(); err != nil {
			t.Fatalf("a taken file was closed: %v", err)
		}
		k.Close()
	}
}

// TestInFlightBounded blocks the handler and floods it: at most MaxInFlight
// run at once, the rest are refused with EAGAIN (requests) or dropped
// (notices), counted, and the connection keeps working.
func TestInFlightBounded(t *testing.T) {
	release := make(chan struct{})
	var running, peak atomic.Int64
	entered := make(chan struct{}, 4*MaxInFlight)
	a, b := pair(t, nil, func(req *Msg) *Msg {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		entered <- struct{}{}
		if req.Op == "block" {
			<-release
		}
		running.Add(-1)
		return nil
	})
	errs := make(chan error, MaxInFlight)
	for range MaxInFlight {
		go func() {
			_, err := a.Call(ctx(t), &Msg{Op: "block"})
			errs <- err
		}()
	}
	for range MaxInFlight {
		<-entered // every slot is taken and blocked
	}
	const extra = 10
	for range extra {
		if _, err := a.Call(ctx(t), &Msg{Op: "block"}); !errors.Is(err, syscall.EAGAIN) {
			t.Fatalf("request past MaxInFlight: %v, want EAGAIN", err)
		}
		if err := a.Send(&Msg{Op: "log"}); err != nil {
			t.Fatal(err)
		}
	}
	// Notices are dropped without an answer: wait until all were counted.
	deadline := time.Now().Add(5 * time.Second)
	for b.Refused() < 2*extra && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := b.Refused(); got != 2*extra {
		t.Fatalf("Refused() = %d, want %d", got, 2*extra)
	}
	close(release)
	for range MaxInFlight {
		if err := <-errs; err != nil {
			t.Fatalf("a blocked request failed: %v", err)
		}
	}
	if p := peak.Load(); p > MaxInFlight {
		t.Fatalf("%d handlers ran at once, over %d", p, MaxInFlight)
	}
	if _, err := a.Call(ctx(t), &Msg{Op: "after"}); err != nil {
		t.Fatalf("after the flood: %v", err)
	}
}

// TestLimitRequests ends the connection on a request over the limit but
// takes replies of any size.
func TestLimitRequests(t *testing.T) {
	fa, fb, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 4096)
	a, err := FromFile(fa, func(*Msg) *Msg { return &Msg{Text: big} })
	if err != nil {
		t.Fatal(err)
	}
	b, err := FromFile(fb, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.LimitRequests(1024)
	go a.Run()
	go b.Run()
	defer a.Close()
	defer b.Close()
	if rep, err := b.Call(ctx(t), &Msg{Op: "small"}); err != nil || len(rep.Text) != len(big) {
		t.Fatalf("a large reply to a limited side: %v", err)
	}
	if err := a.Send(&Msg{Op: "log", Text: big}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a request over the limit did not end the connection")
	}
	if err := b.Err(); err == nil || !strings.Contains(err.Error(), "over this side's limit") {
		t.Fatalf("Err() = %v", err)
	}
}
