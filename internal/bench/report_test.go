package bench

import (
	"bytes"
	"strings"
	"testing"
)

// TestVersusAndNotes: an OpenConnect candidate's ratios to its
// counterparts, in the summary and as table columns, and its notes in the
// table; a counterpart not measured gets no column.
func TestVersusAndNotes(t *testing.T) {
	r := sampleResult()
	r.Candidates = append(r.Candidates,
		CandidateResult{Name: "ptun-dtls", Kind: KindOpenConnect, Versus: []string{"ocserv-dtls", "ptun"},
			Notes: []string{"client Debian's openconnect"}},
		CandidateResult{Name: "ptun-tls", Kind: KindOpenConnect, Versus: []string{"ocserv-tls"}},
		CandidateResult{Name: "ocserv-dtls", Kind: KindOpenConnect})
	for name, v := range map[string]float64{"ptun-dtls": 1.5, "ptun-tls": 1, "ocserv-dtls": 0.5} {
		c := r.Candidate(name)
		c.add(TCPUp, v)
		c.add(CPUUp, 10*v)
	}
	r.Summarize()
	s := r.Candidate("ptun-dtls").Summary[TCPUp]
	if s.Vs["ocserv-dtls"] != 3 || s.Vs["ptun"] != 1.5/2.8 || len(s.Vs) != 2 {
		t.Fatalf("ptun-dtls TCP up ratios %v", s.Vs)
	}
	if s := r.Candidate("ptun-tls").Summary[TCPUp]; s.Vs != nil {
		t.Fatalf("ptun-tls has ratios %v to a candidate not measured", s.Vs)
	}
	if s := r.Candidate("ptun-dtls").Summary[TCPUp]; s.VsFirstPeer == nil {
		t.Fatal("no ratio to the first peer")
	}
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"ptun-dtls / ocserv-dtls", "ptun-dtls / ptun", "3.00x", "note, ptun-dtls: client Debian's openconnect"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ptun-tls / ocserv-tls") {
		t.Errorf("table compares with a candidate not measured:\n%s", out)
	}
}
