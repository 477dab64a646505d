package openconnect

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Fuzz targets for what the client parses from a server: Set-Cookie
// headers, the login exchange's answers (documents and forms), and the
// CSTP stream of a session.

func FuzzParseSetCookie(f *testing.F) {
	for _, s := range []string{
		"webvpn=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; Secure; HttpOnly",
		"webvpncontext=c3RhdGU=; Max-Age=300; Secure; HttpOnly",
		"webvpncontext=; expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/; Secure",
		"webvpnc=bu:/&p:t&iu:1/&sh:ABCD&lu:/+CSCOT+/translation-table?textdomain%3DAnyConnect%26type%3Dmanifest; path=/; Secure; HttpOnly",
		`a="quoted"; Max-Age=0`, "=x", "noequals", "a=b c", "a=b; expires=Mon, 02-Jan-2006 15:04:05 MST",
	} {
		f.Add(s)
	}
	now := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, line string) {
		name, value, del, ok := ParseSetCookie(line, now)
		if !ok {
			if name != "" || value != "" || del {
				t.Fatal("a malformed header returned parts")
			}
			return
		}
		if !validToken(name) {
			t.Fatalf("name %q is not a token", name)
		}
		if value == "" {
			if !del {
				t.Fatal("an empty value that does not delete")
			}
			return
		}
		if !validCookie(value) {
			t.Fatalf("value %q cannot be sent back", value)
		}
		// What the client sends back reads the same.
		n2, v2, _, ok := ParseSetCookie(name+"="+value, now)
		if !ok || n2 != name || v2 != value {
			t.Fatalf("%q=%q reads back as %q=%q (%v)", name, value, n2, v2, ok)
		}
	})
}

// FuzzClientLoginStep feeds one server answer to the login exchange.
func FuzzClientLoginStep(f *testing.F) {
	f.Add(200, "", `<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-request" aggregate-auth-version="2">
<version who="sg">0.1(1)</version>
<auth id="main"><message>Please enter your username.</message>
<form method="post" action="/auth"><input type="text" name="username" label="Username:" /></form></auth>
</config-auth>`)
	f.Add(200, "webvpncontext=c3RhdGU=; Max-Age=300; Secure; HttpOnly", `<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-request" aggregate-auth-version="2">
<version who="sg">0.1(1)</version>
<auth id="main"><message>Please enter your password.</message>
<form method="post" action="/auth"><input type="password" name="password" label="Password:" />
<input type="hidden" name="state" value="x"/>
<select name="group_list" label="Group:"><option>staff</option><option value="ops">Ops</option></select></form></auth>
</config-auth>`)
	f.Add(200, "webvpn=AAAA; Secure", `<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="complete" aggregate-auth-version="2">
<version who="sg">0.1(1)</version><auth id="success"><title>SSL VPN Service</title></auth></config-auth>`)
	f.Add(200, "", `<config-auth type="complete"><session-token>abc</session-token></config-auth>`)
	f.Add(200, "", `<config-auth type="auth-request"><auth><error>Login failed</error><form/></auth></config-auth>`)
	f.Add(401, "", "")
	f.Fuzz(func(t *testing.T, status int, setCookie, body string) {
		if status < 100 || status > 999 {
			return
		}
		c, err := newClient(ClientConfig{Server: "vpn.test:443", Username: "alice", Password: "secret", Group: "ops"})
		if err != nil {
			t.Fatal(err)
		}
		resp := &Response{Status: status, Headers: Headers{{"Set-Cookie", setCookie}}, Body: []byte(body)}
		for _, sent := range []bool{false, true} {
			st := loginState{sentPassword: sent}
			cookie, err := c.loginStep(&st, resp)
			switch {
			case err != nil:
				if cookie != "" {
					t.Fatal("a cookie with an error")
				}
				var ae *AuthError
				if errors.As(err, &ae) != errors.Is(err, ErrAuthFailed) {
					t.Fatalf("%v: AuthError and ErrAuthFailed disagree", err)
				}
			case cookie != "":
				if !validCookie(cookie) {
					t.Fatalf("cookie %q cannot be sent", cookie)
				}
			default:
				// A next request: to a path on the server, with
				// answers only to what the client knows.
				if !strings.HasPrefix(st.target, "/") || strings.ContainsAny(st.target, " \r\n") {
					t.Fatalf("posts to %q", st.target)
				}
				a, err := ParseAnswers(st.body)
				if err != nil {
					// Hidden values are the server's own; a server
					// that sends unanswerable ones gets them back.
					return
				}
				doc, _ := ParseServerDoc([]byte(body))
				hidden := map[string]bool{}
				for _, in := range doc.Auth.Form.Inputs {
					if strings.EqualFold(in.Type, "hidden") {
						hidden[in.Name] = true
					}
				}
				for k, v := range a.Fields {
					if hidden[k] {
						continue
					}
					if want := map[string]string{"username": "alice", "password": "secret"}[k]; v != want {
						t.Fatalf("field %q = %q: only the user name and the password are answered", k, v)
					}
				}
			}
		}
	})
}

// FuzzClientCSTP feeds a session the server's side of a CSTP stream: it
// must end (or run) without a panic, deliver only data frames, and answer
// within its bounds.
func FuzzClientCSTP(f *testing.F) {
	f.Add(AppendFrame(AppendFrame(nil, TypeData, []byte{0x45, 0, 0, 20}), TypeDisconnect, []byte("\xb0bye")))
	f.Add(AppendFrame(AppendFrame(nil, TypeDPDRequest, []byte("probe")), TypeKeepalive, nil))
	f.Add(AppendFrame(AppendFrame(nil, TypeCompressed, []byte{1}), TypeTerminate, nil))
	f.Add([]byte{'S', 'T', 'F', 1, 0xff, 0xff, 0, 0})
	f.Add([]byte("STF\x01\x00\x05\x00\x00abc"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		client, server := net.Pipe()
		defer server.Close()
		go io.Copy(io.Discard, server) // the client's frames: DPD answers, the BYE
		go func() {
			server.Write(stream)
			server.Close()
		}()
		tun := Tunnel{Address4: netip.MustParsePrefix("100.64.0.2/32"), MTU: 1400}
		s := newClientSession(ClientConfig{}, client, client, NewReader(client), tun, "c")
		s.start()
		wantData := 0
		for fr := NewFrameReader(bytes.NewReader(stream)); ; {
			typ, _, err := fr.Next()
			if err != nil || typ == TypeDisconnect || typ == TypeTerminate {
				break
			}
			if typ == TypeData {
				wantData++
			}
		}
		got := 0
		b := make([]byte, MaxPayload)
		for {
			_, err := s.ReadPacket(b)
			if err != nil {
				break
			}
			got++
		}
		if got > wantData {
			t.Fatalf("%d packets delivered from %d data frames", got, wantData)
		}
		if s.Err() == nil {
			t.Fatal("ReadPacket failed while the session runs")
		}
		s.Close()
	})
}
