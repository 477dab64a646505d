package tunnelproc

import (
	"bytes"
	"strings"
	"testing"
)

func TestTailBuffer(t *testing.T) {
	tb := NewTailBuffer(16)
	tb.Write([]byte("one\ntwo\n"))
	tb.Write([]byte("three\nfour\nfive\n"))
	got := tb.LastLines(10)
	// Only the last 16 bytes survive: "ee\nfour\nfive\n" plus a bit more.
	if len(got) == 0 || got[len(got)-1] != "five" || got[len(got)-2] != "four" {
		t.Fatalf("LastLines = %q", got)
	}
	if got := tb.LastLines(1); len(got) != 1 || got[0] != "five" {
		t.Fatalf("LastLines(1) = %q", got)
	}
	if got := NewTailBuffer(8).LastLines(3); len(got) != 0 {
		t.Fatalf("empty buffer: %q", got)
	}
}

// FuzzTailBuffer checks that a TailBuffer always holds exactly the last
// bytes written, up to its size, however the writes are split.
func FuzzTailBuffer(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), uint8(4), uint8(3))
	f.Add([]byte(""), uint8(1), uint8(1))
	f.Add(bytes.Repeat([]byte("line\n"), 40), uint8(64), uint8(7))
	f.Fuzz(func(t *testing.T, data []byte, size, chunk uint8) {
		limit := int(size)%64 + 1
		step := int(chunk)%17 + 1
		tb := NewTailBuffer(limit)
		for i := 0; i < len(data); i += step {
			n, err := tb.Write(data[i:min(i+step, len(data))])
			if err != nil || n != min(step, len(data)-i) {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		want := data[max(0, len(data)-limit):]
		if !bytes.Equal(tb.buf, want) {
			t.Fatalf("kept %q, want %q", tb.buf, want)
		}
		for _, l := range tb.LastLines(5) {
			if strings.Contains(l, "\n") || strings.TrimSpace(l) == "" {
				t.Fatalf("bad line %q", l)
			}
		}
	})
}
