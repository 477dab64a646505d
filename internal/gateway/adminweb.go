package gateway

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"sync"
	"unicode/utf8"
)

// The admin web page: static files embedded in the binary, served on the
// admin listener beside the API (index.html at /, the rest under
// /assets/). They hold no data: the page reads everything from the API
// with the admin's session, so the files are public and need no login.
// See docs/admin-page.md.

//go:embed web
var webFiles embed.FS

// AdminAssetsPrefix is where the page's scripts, style sheet and icon are.
const AdminAssetsPrefix = "/assets/"

// pageCSP is the page's Content-Security-Policy: its own scripts and
// styles only (no inline script or style, nothing from another site),
// requests to its own origin only, no frames, no plugins, no forms that
// navigate, and Trusted Types enforced with no policy, so that a string
// can never reach innerHTML or another HTML sink: the browser throws.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; " +
	"require-trusted-types-for 'script'; trusted-types 'none'"

// webAsset is one embedded file, ready to serve.
type webAsset struct {
	body, gzipped []byte // gzipped nil: not smaller
	contentType   string
	etag          string
}

// webContentTypes are the types of the files the page may have; an
// embedded file of another kind is a mistake the tests catch.
var webContentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

// webAssets maps URL paths ("/", "/assets/main.js") to the embedded files.
var webAssets = sync.OnceValues(func() (map[string]*webAsset, error) { return loadWebAssets(webFiles) })

// loadWebAssets reads the page's files from fsys: web/index.html served at
// /, web/assets/NAME at /assets/NAME.
func loadWebAssets(fsys fs.FS) (map[string]*webAsset, error) {
	out := map[string]*webAsset{}
	err := fs.WalkDir(fsys, "web", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel := strings.TrimPrefix(p, "web/")
		var url string
		switch {
		case rel == "index.html":
			url = "/"
		case strings.HasPrefix(rel, "assets/"):
			url = "/" + rel
		default:
			return fmt.Errorf("admin page: %s is neither web/index.html nor under web/assets/", p)
		}
		ct, ok := webContentTypes[path.Ext(p)]
		if !ok {
			return fmt.Errorf("admin page: %s: no content type for %q", p, path.Ext(p))
		}
		body, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		if !utf8.Valid(body) {
			return fmt.Errorf("admin page: %s is not UTF-8", p)
		}
		sum := sha256.Sum256(body)
		a := &webAsset{body: body, contentType: ct, etag: `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`}
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		zw.Write(body)
		zw.Close()
		if gz.Len() < len(body) {
			a.gzipped = gz.Bytes()
		}
		out[url] = a
		return nil
	})
	if err != nil {
		return nil, err
	}
	if out["/"] == nil {
		return nil, errors.New("admin page: no web/index.html")
	}
	return out, nil
}

// pageHeaders are on every file of the page.
func pageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

// servePage serves the page's file at r's path: index.html never cached
// (a new binary's page is seen at once), the assets revalidated by ETag
// (a 304 of no body while they are unchanged), gzip-encoded when the
// client takes it. An unknown path is a 404.
func servePage(w http.ResponseWriter, r *http.Request) {
	assets, err := webAssets()
	if err != nil {
		http.Error(w, "the admin page is broken in this build: "+err.Error(), http.StatusInternalServerError)
		return
	}
	a := assets[r.URL.Path]
	if a == nil {
		adminFail(w, http.StatusNotFound, "not found: the admin page is at / and the API under "+AdminPrefix+"/")
		return
	}
	pageHeaders(w)
	h := w.Header()
	h.Set("Content-Type", a.contentType)
	h.Set("Vary", "Accept-Encoding")
	if r.URL.Path == "/" {
		h.Set("Cache-Control", "no-store")
	} else {
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", a.etag)
		if etagMatches(r.Header.Get("If-None-Match"), a.etag) {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	body := a.body
	if a.gzipped != nil && acceptsGzip(r.Header.Get("Accept-Encoding")) {
		h.Set("Content-Encoding", "gzip")
		body = a.gzipped
	}
	h.Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// etagMatches reports whether an If-None-Match header names etag.
func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// acceptsGzip reports whether an Accept-Encoding header takes gzip.
func acceptsGzip(header string) bool {
	for _, e := range strings.Split(header, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(e), ";")
		if strings.EqualFold(strings.TrimSpace(name), "gzip") {
			return strings.ReplaceAll(params, " ", "") != "q=0"
		}
	}
	return false
}

// --- the QR code of an invite -----------------------------------------------

// QRRequest is POST /qr's body: the text to encode (an invite's URL).
type QRRequest struct {
	Text string `json:"text"`
}

// QRReply is a QR code's modules: Size rows of Size characters, '1' for a
// dark module, without the quiet zone (4 modules, light, around it).
type QRReply struct {
	Size    int      `json:"size"`
	Modules []string `json:"modules"`
}

// maxQRText is the longest text /qr encodes: an invite URL is about 200
// bytes; a QR code holds at most 2953.
const maxQRText = 2048

func parseQR(b []byte) (QRRequest, error) {
	req, err := decodeStrict[QRRequest](b)
	if err != nil {
		return req, err
	}
	if req.Text == "" || len(req.Text) > maxQRText {
		return req, fmt.Errorf("text: give 1 to %d bytes", maxQRText)
	}
	return req, nil
}

// qr answers the QR code of the text in the body, for the page to draw
// (it sends an invite's URL, which it has just been shown once). It
// stores nothing and reads nothing from the registry; it is POST so that
// the text stays out of URLs and logs.
func (a *adminAPI) qr(w http.ResponseWriter, r *http.Request, _ caller) {
	req, ok := body(w, r, parseQR)
	if !ok {
		return
	}
	code, err := encodeQR(req.Text)
	if err != nil {
		adminFail(w, http.StatusBadRequest, err.Error())
		return
	}
	out := QRReply{Size: code.Size(), Modules: make([]string, code.Size())}
	row := make([]byte, code.Size())
	for y := range code.Size() {
		for x := range code.Size() {
			row[x] = '0'
			if code.Module(x, y) {
				row[x] = '1'
			}
		}
		out.Modules[y] = string(row)
	}
	reply(w, http.StatusOK, out)
}
