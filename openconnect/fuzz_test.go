package openconnect

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

// Every parser of untrusted input has a fuzz target: it must never panic,
// and what it accepts must be what its writer would write.

func FuzzParseFrame(f *testing.F) {
	f.Add(AppendFrame(nil, TypeData, []byte{0x45, 0, 0, 20}))
	f.Add(AppendFrame(nil, TypeDPDRequest, nil))
	f.Add([]byte("STF\x01\x00\x05\x00\x00abc"))
	f.Add([]byte("STF\x01\xff\xff\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, payload, err := ParseFrame(b)
		if err != nil {
			return
		}
		if out := AppendFrame(nil, typ, payload); !bytes.Equal(out, b) {
			t.Fatalf("round trip: in %x out %x", b, out)
		}
	})
}

func FuzzFrameReader(f *testing.F) {
	f.Add(append(AppendFrame(nil, TypeData, []byte("abc")), AppendFrame(nil, TypeKeepalive, nil)...))
	f.Add([]byte("STF\x01\x00\x10\x00\x00short"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := NewFrameReader(bytes.NewReader(b))
		var out []byte
		for range 1000 {
			typ, payload, err := fr.Next()
			if err != nil {
				break
			}
			out = AppendFrame(out, typ, payload)
		}
		if !bytes.HasPrefix(b, out) {
			t.Fatalf("frames read are not a prefix of the input")
		}
	})
}

func FuzzReadRequest(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"))
	f.Add([]byte("CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn=abc\r\nX-CSTP-Base-MTU: 1500\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.0\n\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ReadRequest(bufio.NewReaderSize(bytes.NewReader(b), MaxLine))
		if err != nil {
			return
		}
		if len(req.Headers) > MaxHeaders || len(req.Body) > MaxBody {
			t.Fatalf("limits not kept: %d headers, %d body bytes", len(req.Headers), len(req.Body))
		}
		if req.Method == "CONNECT" {
			ParseConnect(req)
		} else {
			ParseAnswers(req.Body)
		}
		// What it read, written again, reads the same.
		again, err := ReadRequest(bufio.NewReaderSize(bytes.NewReader(
			AppendRequest(nil, req.Method, req.Target, withoutLength(req.Headers), bodyOrNil(req))), MaxLine))
		if err != nil {
			t.Fatalf("a request it read does not read again: %v", err)
		}
		if again.Method != req.Method || again.Target != req.Target || !bytes.Equal(again.Body, req.Body) {
			t.Fatalf("round trip changed the request")
		}
	})
}

func withoutLength(h Headers) Headers {
	var out Headers
	for _, x := range h {
		if !strings.EqualFold(x.Name, "Content-Length") {
			out = append(out, x)
		}
	}
	return out
}

func bodyOrNil(r *Request) []byte {
	if r.Method == "CONNECT" || len(r.Body) == 0 {
		return nil
	}
	return r.Body
}

func FuzzReadResponse(f *testing.F) {
	f.Add(AppendResponse(nil, 200, "CONNECTED", (&Tunnel{MTU: 1400}).Headers(), nil, true), true)
	f.Add(AppendResponse(nil, 200, "OK", Headers{{"Set-Cookie", "webvpn=abc; Secure"}}, LoginComplete("ptun", "").Marshal(), false), false)
	f.Add([]byte("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"), false)
	f.Fuzz(func(t *testing.T, b []byte, connect bool) {
		resp, err := ReadResponse(bufio.NewReaderSize(bytes.NewReader(b), MaxLine), connect)
		if err != nil {
			return
		}
		if connect && resp.Status == 200 {
			ParseTunnel(resp.Headers)
		} else {
			ParseServerDoc(resp.Body)
		}
	})
}

func FuzzParseAnswers(f *testing.F) {
	f.Add([]byte(`<?xml version="1.0"?><config-auth client="vpn" type="auth-reply"><auth><username>alice</username><password>x</password></auth></config-auth>`))
	f.Add(ClientInit("v9.01", "https://vpn.test/").Marshal())
	f.Add([]byte("username=alice&password=secret"))
	f.Add([]byte(`<config-auth type="init"></config-auth><x/>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAnswers(b)
		if err != nil {
			return
		}
		for k, v := range a.Fields {
			if k == "" || len(v) > maxField {
				t.Fatalf("field %q of %d bytes accepted", k, len(v))
			}
		}
	})
}

func FuzzParseServerDoc(f *testing.F) {
	f.Add(LoginForm("ptun", "").Marshal())
	f.Add(LoginComplete("ptun", "hello").Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := ParseServerDoc(b)
		if err != nil {
			return
		}
		if doc.Type != DocAuthRequest && doc.Type != DocComplete {
			t.Fatalf("type %q accepted", doc.Type)
		}
	})
}

func FuzzParseTunnel(f *testing.F) {
	f.Add("X-CSTP-Address: 100.64.0.2\nX-CSTP-Netmask: 255.255.255.0\nX-CSTP-MTU: 1400\nX-CSTP-Split-Include: 198.18.0.0/255.255.0.0\nX-DTLS-CipherSuite: PSK-NEGOTIATE\nX-DTLS-Port: 443\nX-DTLS-App-ID: 00ff")
	f.Add("X-CSTP-Address-IP6: 2001:db8::2/64\nX-DTLS-MTU: 1300\nX-CSTP-DNS: 2001:db8::1")
	f.Fuzz(func(t *testing.T, s string) {
		var h Headers
		for line := range strings.SplitSeq(s, "\n") {
			k, v, _ := strings.Cut(line, ": ")
			h.Add(k, v)
		}
		tun, err := ParseTunnel(h)
		if err != nil {
			return
		}
		if tun.MTU < 576 || tun.MTU > MaxPayload {
			t.Fatalf("MTU %d accepted", tun.MTU)
		}
		if tun.DTLS != nil && (len(tun.DTLS.AppID) > 32 || tun.DTLS.Port <= 0 || tun.DTLS.Port > 65535) {
			t.Fatalf("DTLS parameters %+v accepted", tun.DTLS)
		}
		// What a client accepted, a server writing it would write the same.
		again, err := ParseTunnel(tun.Headers())
		if err != nil {
			t.Fatalf("accepted parameters do not parse once written: %v", err)
		}
		if again.MTU != tun.MTU || again.Address4 != tun.Address4 || again.Address6 != tun.Address6 {
			t.Fatalf("round trip changed the tunnel")
		}
	})
}

func FuzzClientHelloSessionID(f *testing.F) {
	hello := make([]byte, 100)
	hello[0], hello[13], hello[59] = 22, 1, 32
	f.Add(hello)
	f.Add([]byte{22})
	f.Add(gnutlsHello)
	f.Fuzz(func(t *testing.T, b []byte) {
		id, ok := ClientHelloSessionID(b)
		if ok && len(id) > 32 {
			t.Fatalf("a %d-byte session id", len(id))
		}
		suites, ok2 := ClientHelloCipherSuites(b)
		if ok2 && (!ok || 2*len(suites) > len(b)) {
			t.Fatalf("%d suites from %d bytes (session id found: %v)", len(suites), len(b), ok)
		}
		suitesFor(b)
	})
}
