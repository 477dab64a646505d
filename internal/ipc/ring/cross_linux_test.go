package ring

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The cross-process tests re-execute the test binary as the peer. The child
// finds the memfd at descriptor 3 and the dataReady and spaceReady eventfds
// at 4 and 5 (cmd.ExtraFiles), and its role in childRoleEnv.
const (
	childRoleEnv    = "PTUN_RING_CHILD"
	childRecordsEnv = "PTUN_RING_RECORDS"
	childSeedEnv    = "PTUN_RING_SEED"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(childRoleEnv); role != "" {
		if err := runChild(role); err != nil {
			fmt.Fprintf(os.Stderr, "child %s: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runChild(role string) error {
	records, _ := strconv.Atoi(os.Getenv(childRecordsEnv))
	seed, _ := strconv.ParseUint(os.Getenv(childSeedEnv), 10, 64)
	r, err := Map(3)
	if err != nil {
		return err
	}
	defer r.Unmap()
	switch role {
	case "producer":
		p, err := NewProducer(r, 4, 5)
		if err != nil {
			return err
		}
		defer p.Close()
		n, bytes, err := produce(p, records, seed)
		if err != nil {
			return err
		}
		fmt.Printf("ok records=%d bytes=%d\n", n, bytes)
	case "consumer":
		c, err := NewConsumer(r, 4, 5)
		if err != nil {
			return err
		}
		defer c.Close()
		n, bytes, err := consume(c, seed)
		if err != nil {
			return err
		}
		fmt.Printf("ok records=%d bytes=%d\n", n, bytes)
	case "hostile":
		// Publish a tail a whole lap beyond any possible head, then
		// wake the consumer.
		r.h.tail.Store(r.size + RecordHeaderSize)
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		if _, err := unix.Write(4, one[:]); err != nil {
			return err
		}
		fmt.Println("ok")
	default:
		return fmt.Errorf("unknown role")
	}
	return nil
}

// produce pushes records sized by newSizer(seed, gsoMax) in random batches,
// then flushes and closes.
func produce(p *Producer, records int, seed uint64) (int, uint64, error) {
	sz := newSizer(seed, gsoMax)
	rng := rand.New(rand.NewPCG(seed, 1))
	var total uint64
	for seq := range uint64(records) {
		n := sz.next()
		dst, err := p.Reserve(n)
		if err != nil {
			return int(seq), total, fmt.Errorf("record %d: %w", seq, err)
		}
		fillRecord(dst, seq)
		p.Commit(n)
		total += uint64(n)
		if rng.IntN(16) == 0 {
			p.Flush()
		}
	}
	p.Flush()
	return records, total, p.Close()
}

// consume reads and checks records until the ring is closed and drained.
func consume(c *Consumer, seed uint64) (int, uint64, error) {
	sz := newSizer(seed, gsoMax)
	var seq, total uint64
	for {
		b, err := c.Next(true)
		if err == ErrClosed {
			return int(seq), total, nil
		}
		if err != nil {
			return int(seq), total, fmt.Errorf("record %d: %w", seq, err)
		}
		if err := checkRecord(b, seq, sz.next()); err != nil {
			return int(seq), total, err
		}
		total += uint64(len(b))
		seq++
		if seq%8 == 0 {
			c.Release()
		}
	}
}

// startChild runs the test binary as the peer with the ring's descriptors.
func startChild(t *testing.T, ctx context.Context, tr *testRing, role string, records int, seed uint64) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	var files []*os.File
	for _, fd := range []int{tr.fd, tr.dataReady, tr.spaceReady} {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, os.NewFile(uintptr(dup), "ring"))
	}
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		childRoleEnv+"="+role,
		childRecordsEnv+"="+strconv.Itoa(records),
		childSeedEnv+"="+strconv.FormatUint(seed, 10))
	cmd.ExtraFiles = files
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	return cmd, &out
}

// TestCrossProcess moves 20,000 records of 1..65546 bytes between this
// process and a child that maps the same memfd, in both directions, and
// checks every byte and the counts on both sides. A child that corrupts the
// ring makes the parent's consumer fail with ErrCorrupt, not crash.
func TestCrossProcess(t *testing.T) {
	const records, seed = 20_000, 11
	t.Run("child consumes", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		tr := newTestRingSides(t, 256<<10, true, false) // the child is the consumer
		cmd, out := startChild(t, ctx, tr, "consumer", records, seed)
		n, total, err := produce(tr.p, records, seed)
		if err != nil {
			t.Fatalf("producer: %v", err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		want := fmt.Sprintf("ok records=%d bytes=%d\n", n, total)
		if out.String() != want {
			t.Fatalf("child said %q, want %q", out, want)
		}
		t.Logf("%d records, %d bytes, producer %v", n, total, tr.p.Stats())
	})
	t.Run("child produces", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		tr := newTestRingSides(t, 256<<10, false, true) // the child is the producer
		cmd, out := startChild(t, ctx, tr, "producer", records, seed)
		n, total, err := consume(tr.c, seed)
		if err != nil {
			t.Fatalf("consumer: %v", err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		if want := fmt.Sprintf("ok records=%d bytes=%d\n", n, total); out.String() != want || n != records {
			t.Fatalf("child said %q; parent read %d records, %d bytes of %d", out, n, total, records)
		}
		t.Logf("%d records, %d bytes, consumer %v", n, total, tr.c.Stats())
	})
	t.Run("hostile child", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		tr := newTestRingSides(t, MinDataSize, false, true)
		cmd, out := startChild(t, ctx, tr, "hostile", 0, 0)
		done := make(chan error, 1)
		tr.goroutine(func() {
			_, err := tr.c.Next(true)
			done <- err
		})
		err, ok := errWithin(done, 30*time.Second)
		if !ok {
			t.Fatal("Next never returned")
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Next: %v, want ErrCorrupt", err)
		}
		if err := cmd.Wait(); err != nil || !strings.HasPrefix(out.String(), "ok") {
			t.Fatalf("child: %v\n%s", err, out)
		}
	})
}
