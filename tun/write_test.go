package tun

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/ptun-vpn/ptun/metrics"
)

// fakeSys records what batchWriter writes and fails writes on demand.
type fakeSys struct {
	writes [][]byte
	fail   func(b []byte) error
}

func (f *fakeSys) write(b []byte) error {
	if f.fail != nil {
		if err := f.fail(b); err != nil {
			return err
		}
	}
	f.writes = append(f.writes, append([]byte(nil), b...))
	return nil
}

func newTestWriter(fs *fakeSys, logf func(string, ...any)) (*batchWriter, *counters) {
	st := new(counters)
	return &batchWriter{vnet: true, tcpGRO: true, udpGRO: true, sys: fs.write, st: st, logf: logf}, st
}

func counter(cs []metrics.Counter, name string) uint64 {
	for _, c := range cs {
		if c.Name == name {
			return c.Value
		}
	}
	panic("no counter " + name)
}

func isGSO(b []byte) bool { return b[1] != virtioGSONone }

func TestWriteCoalesces(t *testing.T) {
	fs := &fakeSys{}
	w, st := newTestWriter(fs, nil)
	pkts := cat(tcpStream(flow4(1, false), 1, 0, 10, 1000, 0, 0), [][]byte{{0x45, 0, 0, 20}})
	n, err := w.write(writeBufs(testOffset, pkts...), testOffset)
	if err != nil || n != len(pkts) {
		t.Fatalf("write = %d, %v", n, err)
	}
	if len(fs.writes) != 2 || !isGSO(fs.writes[0]) || isGSO(fs.writes[1]) {
		t.Fatalf("%d writes; want one super-packet and one lone packet", len(fs.writes))
	}
	s := st.snapshot()
	if counter(s, "tun_gro_coalesced") != 1 || counter(s, "tun_gro_coalesced_packets") != 10 ||
		counter(s, "tun_packets_out") != 11 || counter(s, "tun_writes") != 2 {
		t.Fatalf("stats %v", s)
	}
}

// TestWriteEINVALFallback: the kernel refuses super-packets, so GRO is
// switched off for good, logged once, and the members are written again
// one by one, in order: nothing is lost.
func TestWriteEINVALFallback(t *testing.T) {
	fs := &fakeSys{fail: func(b []byte) error {
		if isGSO(b) {
			return fmt.Errorf("%w: fake", errKernelInvalid)
		}
		return nil
	}}
	var logs []string
	w, st := newTestWriter(fs, func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) })
	a, b := tcpStream(flow4(1, false), 1, 0, 5, 1000, 0, 0), udpStream(flow6(2, true), 1, 5, 800, 0)
	pkts := cat(a, b)
	n, err := w.write(writeBufs(testOffset, pkts...), testOffset)
	if err != nil || n != len(pkts) {
		t.Fatalf("write = %d, %v", n, err)
	}
	if len(fs.writes) != len(pkts) {
		t.Fatalf("%d writes; want %d", len(fs.writes), len(pkts))
	}
	for i, p := range pkts {
		if !bytes.Equal(fs.writes[i][virtioNetHdrLen:], p) || isGSO(fs.writes[i]) {
			t.Fatalf("write %d is not packet %d as it was", i, i)
		}
	}
	s := st.snapshot()
	if counter(s, "tun_gro_disabled") != 1 || counter(s, "tun_gro_rewritten") != 5 ||
		counter(s, "drop_tun_write_einval") != 0 || len(logs) != 1 {
		t.Fatalf("stats %v, logs %q", s, logs)
	}
	// GRO stays off.
	fs.writes = nil
	if n, err := w.write(writeBufs(testOffset, a...), testOffset); err != nil || n != len(a) || len(fs.writes) != len(a) {
		t.Fatalf("second write = %d, %v, %d syscalls", n, err, len(fs.writes))
	}
}

func TestWriteKeepsGoingAndCountsDrops(t *testing.T) {
	junk := []byte{0x00, 1, 2, 3}
	full := []byte{0x45, 0xff}
	down := []byte{0x45, 0xfe}
	other := []byte{0x45, 0xfd}
	fs := &fakeSys{fail: func(b []byte) error {
		switch {
		case bytes.Equal(b[virtioNetHdrLen:], junk):
			return fmt.Errorf("%w: fake", errKernelInvalid)
		case bytes.Equal(b[virtioNetHdrLen:], full):
			return fmt.Errorf("%w: fake", errKernelFull)
		case bytes.Equal(b[virtioNetHdrLen:], down):
			return fmt.Errorf("%w: fake", errLinkDown)
		case bytes.Equal(b[virtioNetHdrLen:], other):
			return errors.New("fake EFAULT")
		}
		return nil
	}}
	w, st := newTestWriter(fs, nil)
	good := flow4(1, false).packet(1, 0, 1, tcpFlagACK, nil)
	pkts := [][]byte{good, junk, good, full, down, other, good}
	n, err := w.write(writeBufs(testOffset, pkts...), testOffset)
	if n != 3 || len(fs.writes) != 3 {
		t.Fatalf("write = %d (%d syscalls); want 3", n, len(fs.writes))
	}
	for _, want := range []string{"drop_tun_write_einval", "drop_tun_write_full", "drop_tun_write_link_down", "drop_tun_write_error", "fake EFAULT"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
	if !errors.Is(err, errKernelInvalid) || !errors.Is(err, errKernelFull) {
		t.Errorf("error %v does not wrap the causes", err)
	}
	s := st.snapshot()
	for _, name := range []string{"drop_tun_write_einval", "drop_tun_write_full", "drop_tun_write_link_down", "drop_tun_write_error"} {
		if counter(s, name) != 1 {
			t.Errorf("%s = %d; want 1", name, counter(s, name))
		}
	}
}

func TestWriteClosedStops(t *testing.T) {
	calls := 0
	fs := &fakeSys{fail: func(b []byte) error {
		calls++
		if calls == 2 {
			return os.ErrClosed
		}
		return nil
	}}
	w, _ := newTestWriter(fs, nil)
	w.tcpGRO, w.udpGRO = false, false
	p := flow4(1, false).packet(1, 0, 1, tcpFlagACK, nil)
	n, err := w.write(writeBufs(testOffset, p, p, p), testOffset)
	if n != 1 || !errors.Is(err, os.ErrClosed) || calls != 2 {
		t.Fatalf("write = %d, %v after %d calls", n, err, calls)
	}
}

func TestWriteNoVnet(t *testing.T) {
	fs := &fakeSys{}
	w, _ := newTestWriter(fs, nil)
	w.vnet = false
	pkts := tcpStream(flow4(1, false), 1, 0, 3, 100, 0, 0)
	n, err := w.write(writeBufs(0, pkts...), 0)
	if err != nil || n != 3 || len(fs.writes) != 3 || !bytes.Equal(fs.writes[0], pkts[0]) {
		t.Fatalf("write = %d, %v, %d writes", n, err, len(fs.writes))
	}
	w.vnet = true
	if _, err := w.write(writeBufs(4, pkts...), 4); !errors.Is(err, errBadOffset) {
		t.Fatalf("offset 4 with vnet: %v", err)
	}
}
