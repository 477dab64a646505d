package gateway

import (
	"bytes"
	"compress/gzip"
	"image"
	"image/color"
	"io"
	"net/http"
	"path"
	"regexp"
	"sort"
	"strings"
	"testing"
	"testing/fstest"
)

// get is a GET of the admin handler with extra headers.
func (e *adminEnv) get(t *testing.T, target string, headers ...string) *http.Response {
	t.Helper()
	w := e.do(t, "GET", target, "", func(r *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			r.Header.Set(headers[i], headers[i+1])
		}
	})
	return w.Result()
}

func pageAssets(t *testing.T) map[string]*webAsset {
	t.Helper()
	assets, err := webAssets()
	if err != nil {
		t.Fatal(err)
	}
	return assets
}

// TestAdminPageServed: every embedded file is served at its path with its
// content type, the page's CSP and the other headers; the HTML is never
// stored, the assets are revalidated by ETag (304) and gzip-encoded when
// asked; HEAD sends no body.
func TestAdminPageServed(t *testing.T) {
	e := newAdminEnv(t)
	assets := pageAssets(t)
	if len(assets) < 8 {
		t.Fatalf("only %d files embedded", len(assets))
	}
	for p, a := range assets {
		resp := e.get(t, p)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !bytes.Equal(body, a.body) {
			t.Errorf("GET %s: %d, %d bytes (want %d)", p, resp.StatusCode, len(body), len(a.body))
			continue
		}
		want := webContentTypes[path.Ext(p)]
		if p == "/" {
			want = "text/html; charset=utf-8"
		}
		h := resp.Header
		if h.Get("Content-Type") != want || want == "" {
			t.Errorf("GET %s: Content-Type %q, want %q", p, h.Get("Content-Type"), want)
		}
		if h.Get("Content-Security-Policy") != pageCSP || h.Get("X-Content-Type-Options") != "nosniff" ||
			h.Get("X-Frame-Options") != "DENY" || h.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("GET %s: headers %v", p, h)
		}
		if p == "/" {
			if h.Get("Cache-Control") != "no-store" || h.Get("ETag") != "" {
				t.Errorf("GET /: Cache-Control %q, ETag %q: the page must never be stored", h.Get("Cache-Control"), h.Get("ETag"))
			}
			continue
		}
		if h.Get("Cache-Control") != "no-cache" || h.Get("ETag") != a.etag {
			t.Errorf("GET %s: Cache-Control %q, ETag %q", p, h.Get("Cache-Control"), h.Get("ETag"))
		}
		if r := e.get(t, p, "If-None-Match", a.etag); r.StatusCode != http.StatusNotModified {
			t.Errorf("GET %s with its ETag: %d, want 304", p, r.StatusCode)
		}
		if r := e.get(t, p, "If-None-Match", `"other"`); r.StatusCode != 200 {
			t.Errorf("GET %s with another ETag: %d, want 200", p, r.StatusCode)
		}
		r := e.get(t, p, "Accept-Encoding", "gzip, br")
		if a.gzipped == nil {
			continue
		}
		if r.Header.Get("Content-Encoding") != "gzip" {
			t.Errorf("GET %s accepting gzip: Content-Encoding %q", p, r.Header.Get("Content-Encoding"))
			continue
		}
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := io.ReadAll(zr); !bytes.Equal(got, a.body) {
			t.Errorf("GET %s: the gzipped body is not the file", p)
		}
	}
	w := e.do(t, "HEAD", "/assets/main.js", "")
	if w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Errorf("HEAD /assets/main.js: %d, %d bytes, %q", w.Code, w.Body.Len(), w.Header().Get("Content-Type"))
	}
}

// TestAdminPageUnknown: a path that is no file of the page is a 404, with
// the API's headers; so is a method other than GET or HEAD.
func TestAdminPageUnknown(t *testing.T) {
	e := newAdminEnv(t)
	for _, p := range []string{"/assets/nope.js", "/assets/", "/index.html", "/nope", "/web/index.html",
		"/assets/main.js/", "/assets/MAIN.JS", "/favicon.ico"} {
		w := e.do(t, "GET", p, "")
		if w.Code != http.StatusNotFound || w.Header().Get("Content-Type") != "application/json; charset=utf-8" ||
			w.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: %d %q", p, w.Code, w.Header().Get("Content-Type"))
		}
	}
	// The mux cleans dot segments (and adds the folder's slash) with a
	// redirect, never serving anything else.
	for _, p := range []string{"/assets/../admin.go", "/assets/./main.js", "/assets"} {
		if w := e.do(t, "GET", p, ""); w.Code == 200 {
			t.Errorf("GET %s: 200", p)
		}
	}
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		for _, p := range []string{"/", "/assets/main.js"} {
			if w := e.do(t, m, p, ""); w.Code != http.StatusNotFound && w.Code != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %d", m, p, w.Code)
			}
		}
	}
}

// TestAdminPageHoldsNoData: the page is public static files, the same with
// or without a session, while the API still answers 401 without one.
func TestAdminPageHoldsNoData(t *testing.T) {
	e := newAdminEnv(t)
	cookie, _ := e.login(t)
	anon := e.do(t, "GET", "/", "")
	logged := e.do(t, "GET", "/", "", session(cookie, ""))
	if anon.Code != 200 || !bytes.Equal(anon.Body.Bytes(), logged.Body.Bytes()) || !bytes.Equal(anon.Body.Bytes(), pageAssets(t)["/"].body) {
		t.Error("the page differs with a session, or from the embedded file")
	}
	for _, p := range []string{"/users", "/devices", "/whoami", "/overview", "/audit"} {
		if w := e.do(t, "GET", AdminPrefix+p, ""); w.Code != http.StatusUnauthorized {
			t.Errorf("GET %s without a session: %d, want 401", p, w.Code)
		}
	}
	if w := e.do(t, "POST", AdminPrefix+"/qr", `{"text":"x"}`); w.Code != http.StatusUnauthorized {
		t.Errorf("POST /qr without a session: %d", w.Code)
	}
}

var (
	// attrRef is a src or href attribute's value in index.html.
	attrRef = regexp.MustCompile(`\b(?:src|href)="([^"]*)"`)
	// importRef is a module's import of another (import … from "X", or
	// import "X").
	importRef = regexp.MustCompile(`(?m)^\s*import\s+(?:[^"';]*\s+from\s+)?"([^"]+)"`)
	// urlRef is anything that looks like another site's address.
	urlRef = regexp.MustCompile(`(?i)\b(?:https?|wss?|ftp):|(?:src|href|url)\s*[=(]\s*["']?//`)
)

// TestAdminPageReferences: every file index.html names and every module a
// script imports is served, with the right type; nothing refers to
// another site (the one exception is the SVG namespace's name, which is
// not fetched); every embedded file is reached from index.html.
func TestAdminPageReferences(t *testing.T) {
	e := newAdminEnv(t)
	assets := pageAssets(t)
	reached := map[string]bool{"/": true}
	todo := []string{"/"}
	for len(todo) > 0 {
		p := todo[0]
		todo = todo[1:]
		a := assets[p]
		text := string(a.body)
		var refs []string
		switch path.Ext(p) {
		case "", ".html":
			for _, m := range attrRef.FindAllStringSubmatch(text, -1) {
				if !strings.HasPrefix(m[1], "#") {
					refs = append(refs, m[1])
				}
			}
		case ".js":
			for _, m := range importRef.FindAllStringSubmatch(text, -1) {
				if !strings.HasPrefix(m[1], "./") {
					t.Errorf("%s imports %q: import the page's own modules by ./NAME.js", p, m[1])
					continue
				}
				refs = append(refs, path.Join(path.Dir(p), m[1]))
			}
		}
		for _, ref := range refs {
			if !strings.HasPrefix(ref, AdminAssetsPrefix) {
				t.Errorf("%s refers to %q, not under %s", p, ref, AdminAssetsPrefix)
				continue
			}
			resp := e.get(t, ref)
			if resp.StatusCode != 200 {
				t.Errorf("%s refers to %s: %d", p, ref, resp.StatusCode)
				continue
			}
			if !reached[ref] {
				reached[ref] = true
				todo = append(todo, ref)
			}
		}
	}
	for p, a := range assets {
		if !reached[p] {
			t.Errorf("%s is embedded but nothing refers to it", p)
		}
		text := strings.ReplaceAll(string(a.body), `"http://www.w3.org/2000/svg"`, `""`)
		if m := urlRef.FindString(text); m != "" {
			t.Errorf("%s names another site (%q): the page loads nothing from elsewhere", p, m)
		}
	}
}

// TestAdminPageSafeCode: no file of the page parses strings as markup or
// code (the page's CSP would refuse them anyway: Trusted Types with no
// policy, no 'unsafe-inline', no 'unsafe-eval'), and index.html has no
// inline script, style or event handler.
func TestAdminPageSafeCode(t *testing.T) {
	sinks := regexp.MustCompile(`\b(innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\s*\(|new\s+Function|setTimeout\s*\(\s*["'\x60]|setInterval\s*\(\s*["'\x60]|createContextualFragment|DOMParser|srcdoc)`)
	for p, a := range pageAssets(t) {
		if path.Ext(p) != ".js" {
			continue
		}
		if m := sinks.FindString(string(a.body)); m != "" {
			t.Errorf("%s uses %s", p, m)
		}
	}
	html := string(pageAssets(t)["/"].body)
	for _, tag := range regexp.MustCompile(`<script[^>]*>[^<]*`).FindAllString(html, -1) {
		if !strings.Contains(tag, ` src="/assets/`) || !strings.HasSuffix(tag, ">") {
			t.Errorf("index.html has an inline script: %q", tag)
		}
	}
	for _, bad := range []*regexp.Regexp{
		regexp.MustCompile(`<style`),
		regexp.MustCompile(`\sstyle=`),
		regexp.MustCompile(`\son[a-z]+=`),
		regexp.MustCompile(`javascript:`),
	} {
		if m := bad.FindString(html); m != "" {
			t.Errorf("index.html has %q", m)
		}
	}
	for _, d := range []string{"script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "default-src 'none'",
		"require-trusted-types-for 'script'"} {
		if !strings.Contains(pageCSP, d) {
			t.Errorf("the page's CSP lacks %s", d)
		}
	}
	if strings.Contains(pageCSP, "unsafe") || strings.Contains(pageCSP, "*") || strings.Contains(pageCSP, "data:") {
		t.Errorf("the page's CSP allows too much: %s", pageCSP)
	}
}

// TestAdminPageSize: the page's first load (every file, gzipped as
// served) stays well under 200 KB.
func TestAdminPageSize(t *testing.T) {
	var raw, sent int
	var lines []string
	for p, a := range pageAssets(t) {
		n := len(a.body)
		if a.gzipped != nil {
			n = len(a.gzipped)
		}
		raw += len(a.body)
		sent += n
		lines = append(lines, p)
	}
	sort.Strings(lines)
	t.Logf("%d files, %d bytes, %d gzipped as served", len(lines), raw, sent)
	if sent > 100<<10 || raw > 200<<10 {
		t.Errorf("the page is %d bytes (%d as served): keep it under 200 KB on first load", raw, sent)
	}
}

// TestLoadWebAssetsRefuses: a file the page cannot serve properly is a
// build error, not a silent 404.
func TestLoadWebAssetsRefuses(t *testing.T) {
	for name, fsys := range map[string]fstest.MapFS{
		"no index":     {"web/assets/a.js": {Data: []byte("x")}},
		"unknown type": {"web/index.html": {Data: []byte("x")}, "web/assets/a.png": {Data: []byte("x")}},
		"outside":      {"web/index.html": {Data: []byte("x")}, "web/other.js": {Data: []byte("x")}},
		"not UTF-8":    {"web/index.html": {Data: []byte("x")}, "web/assets/a.js": {Data: []byte{0xff, 0xfe}}},
	} {
		if _, err := loadWebAssets(fsys); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
	if a, err := loadWebAssets(fstest.MapFS{"web/index.html": {Data: []byte("<p>")}, "web/assets/x.css": {Data: []byte("p{}")}}); err != nil || len(a) != 2 {
		t.Errorf("a good tree: %v %v", a, err)
	}
}

// qrImage draws a QRReply's modules with the quiet zone, 4 pixels a
// module.
func qrImage(r QRReply) image.Image {
	const scale, quiet = 4, 4
	n := (r.Size + 2*quiet) * scale
	img := image.NewGray(image.Rect(0, 0, n, n))
	for y := range n {
		for x := range n {
			mx, my := x/scale-quiet, y/scale-quiet
			c := color.Gray{Y: 255}
			if mx >= 0 && my >= 0 && mx < r.Size && my < r.Size && r.Modules[my][mx] == '1' {
				c = color.Gray{}
			}
			img.SetGray(x, y, c)
		}
	}
	return img
}

// TestAdminQR: POST /qr answers the modules of a QR code that a decoder
// written apart from the encoder reads back as the text; it refuses an
// empty or too long text, and writes nothing.
func TestAdminQR(t *testing.T) {
	e := newAdminEnv(t)
	tok := bearer(e.token(t))
	before := e.auditCount(t)
	text := "https://198.18.0.1:8443/join#v1.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_&pin-sha256:" + strings.Repeat("Q", 43) + "="
	var r QRReply
	want(t, e.do(t, "POST", AdminPrefix+"/qr", `{"text":"`+text+`"}`, tok), http.StatusOK, &r)
	if r.Size < 21 || len(r.Modules) != r.Size {
		t.Fatalf("size %d, %d rows", r.Size, len(r.Modules))
	}
	for i, row := range r.Modules {
		if len(row) != r.Size || strings.Trim(row, "01") != "" {
			t.Fatalf("row %d: %q", i, row)
		}
	}
	if got := decodeQR(t, qrImage(r)); got != text {
		t.Errorf("decoded %q, want %q", got, text)
	}
	for _, b := range []string{`{"text":""}`, `{}`, `{"text":"` + strings.Repeat("a", maxQRText+1) + `"}`, `{"text":"x","other":1}`} {
		want(t, e.do(t, "POST", AdminPrefix+"/qr", b, tok), http.StatusBadRequest, nil)
	}
	if e.auditCount(t) != before {
		t.Error("/qr wrote to the audit log")
	}
}

// FuzzParseQR: what parseQR accepts is a text of 1 to maxQRText bytes,
// and every such text encodes.
func FuzzParseQR(f *testing.F) {
	f.Add([]byte(`{"text":"https://198.18.0.1:8443/join#v1.x&pin-sha256:AAAA"}`))
	f.Add([]byte(`{"text":""}`))
	f.Add([]byte(`{"text":"\u0000\uffff"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := parseQR(b)
		if err != nil {
			return
		}
		if req.Text == "" || len(req.Text) > maxQRText {
			t.Fatalf("accepted %d bytes", len(req.Text))
		}
		if _, err := encodeQR(req.Text); err != nil {
			t.Fatalf("accepted %q, which does not encode: %v", req.Text, err)
		}
	})
}
