package tuntest

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/ptun-vpn/ptun/internal/testenv"
)

func bufs(n, size int) [][]byte {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, size)
	}
	return b
}

func TestReadDrainsQueued(t *testing.T) {
	c := NewChannelTUN(1420)
	t.Cleanup(func() { c.Close() })
	for i := range 5 {
		c.Inbound <- []byte{0x45, byte(i)}
	}
	b, sizes := bufs(BatchSize, 100), make([]int, BatchSize)
	n, err := c.Read(b, sizes, 10)
	if err != nil || n != 5 {
		t.Fatalf("Read = %d, %v; want 5, nil", n, err)
	}
	for i := range n {
		if got := b[i][10 : 10+sizes[i]]; !bytes.Equal(got, []byte{0x45, byte(i)}) {
			t.Errorf("packet %d = %x", i, got)
		}
	}
	// Fewer buffers than queued packets: the rest stays for the next Read.
	for i := range 3 {
		c.Inbound <- []byte{byte(i)}
	}
	n, err = c.Read(b[:2], sizes, 10)
	if err != nil || n != 2 {
		t.Fatalf("Read = %d, %v; want 2", n, err)
	}
	n, err = c.Read(b, sizes, 10)
	if err != nil || n != 1 || b[0][10] != 2 {
		t.Fatalf("Read = %d, %v, %x; want the third packet", n, err, b[0][10])
	}
}

func TestWriteCopiesAndBlocks(t *testing.T) {
	c := NewChannelTUN(1420)
	t.Cleanup(func() { c.Close() })
	pkts := [][]byte{append(make([]byte, 10), 1, 2, 3), append(make([]byte, 10), 4)}
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(pkts, 10)
		done <- err
	}()
	first := <-c.Outbound
	pkts[0][10] = 9 // the copy must not change
	second := <-c.Outbound
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, []byte{1, 2, 3}) || !bytes.Equal(second, []byte{4}) {
		t.Fatalf("got %x %x", first, second)
	}
}

func TestCloseUnblocks(t *testing.T) {
	c := NewChannelTUN(1420)
	readErr := make(chan error, 1)
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Read(bufs(1, 100), make([]int, 1), 10)
		readErr <- err
	}()
	go func() {
		_, err := c.Write(bufs(1, 20), 10) // nobody reads Outbound: blocks
		writeErr <- err
	}()
	testenv.WaitBlocked(t, "tuntest.(*ChannelTUN).Read")
	testenv.WaitBlocked(t, "tuntest.(*ChannelTUN).Write")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []chan error{readErr, writeErr} {
		select {
		case err := <-ch:
			if !errors.Is(err, os.ErrClosed) {
				t.Errorf("err = %v; want os.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Read/Write still blocked after Close")
		}
	}
	if _, ok := <-c.Outbound; ok {
		t.Error("Outbound not closed")
	}
	if _, err := c.Write(bufs(1, 20), 10); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close = %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}
