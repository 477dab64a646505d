package openconnect

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"
)

// The authentication exchange: the client POSTs a config-auth document of
// type "init", the server answers "auth-request" with a form, the client
// answers "auth-reply" with the form's fields, until the server answers
// "complete" (with the session cookie in Set-Cookie: webvpn=…). Older
// clients (openconnect --no-xmlpost) post the fields urlencoded instead.

// Document types.
const (
	DocInit        = "init"
	DocAuthRequest = "auth-request"
	DocAuthReply   = "auth-reply"
	DocComplete    = "complete"
)

// A ConfigAuth is a config-auth document, as either side sends it.
type ConfigAuth struct {
	XMLName      xml.Name    `xml:"config-auth"`
	Client       string      `xml:"client,attr,omitempty"`
	Type         string      `xml:"type,attr"`
	Aggregate    string      `xml:"aggregate-auth-version,attr,omitempty"`
	Version      *Version    `xml:"version,omitempty"`
	DeviceID     string      `xml:"device-id,omitempty"`
	GroupAccess  string      `xml:"group-access,omitempty"`
	GroupSelect  string      `xml:"group-select,omitempty"`
	Opaque       *InnerXML   `xml:"opaque,omitempty"`
	Auth         *AuthBlock  `xml:"auth,omitempty"`
	SessionToken string      `xml:"session-token,omitempty"`
	Extra        []InnerNode `xml:",any"`
}

// Version is the version element, who="vpn" (client) or "sg" (server).
type Version struct {
	Who  string `xml:"who,attr,omitempty"`
	Text string `xml:",chardata"`
}

// InnerXML keeps an element's content verbatim (the server's opaque).
type InnerXML struct {
	Attrs []xml.Attr `xml:",any,attr"`
	Inner string     `xml:",innerxml"`
}

// InnerNode is an element this package does not interpret.
type InnerNode struct {
	XMLName xml.Name
	Inner   string `xml:",innerxml"`
}

// AuthBlock is the auth element: the server's form (auth-request), its
// verdict (complete: id="success"), or the client's answers (auth-reply:
// one child per field).
type AuthBlock struct {
	ID      string  `xml:"id,attr,omitempty"`
	Title   string  `xml:"title,omitempty"`
	Banner  string  `xml:"banner,omitempty"`
	Message string  `xml:"message,omitempty"`
	Error   string  `xml:"error,omitempty"`
	Form    *Form   `xml:"form,omitempty"`
	Fields  []Field `xml:",any"`
}

// A Field is one answer of a client's auth-reply: <username>alice</username>.
type Field struct {
	XMLName xml.Name
	Text    string `xml:",chardata"`
}

// A Form is what the server asks the client to fill in.
type Form struct {
	Method  string   `xml:"method,attr,omitempty"`
	Action  string   `xml:"action,attr,omitempty"`
	Inputs  []Input  `xml:"input"`
	Selects []Select `xml:"select"`
}

// An Input is one field of a form.
type Input struct {
	Type  string `xml:"type,attr"`
	Name  string `xml:"name,attr"`
	Label string `xml:"label,attr,omitempty"`
	Value string `xml:"value,attr,omitempty"`
}

// A Select is a choice (the group list).
type Select struct {
	Name    string   `xml:"name,attr"`
	Label   string   `xml:"label,attr,omitempty"`
	Options []Option `xml:"option"`
}

// An Option is one choice of a Select.
type Option struct {
	Value string `xml:"value,attr,omitempty"`
	Text  string `xml:",chardata"`
}

// ErrBadAuthBody is the error for a body that is neither a config-auth
// document nor urlencoded fields.
var ErrBadAuthBody = errors.New("openconnect: malformed authentication body")

// maxField bounds one answer (a user name, a password).
const maxField = 1024

// Answers are the fields a client filled in, and what kind of body it sent.
type Answers struct {
	Type   string            // DocInit or DocAuthReply; "" for a urlencoded or empty body
	Fields map[string]string // e.g. "username", "password"
	Group  string            // group-select, if any
	XML    bool              // the client spoke config-auth XML
}

// ParseAnswers parses a client's authentication body: a config-auth
// document (init or auth-reply), urlencoded fields, or nothing.
func ParseAnswers(body []byte) (Answers, error) {
	a := Answers{Fields: map[string]string{}}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return a, nil
	}
	if trimmed[0] != '<' {
		v, err := url.ParseQuery(string(trimmed))
		if err != nil {
			return Answers{}, fmt.Errorf("%w: %v", ErrBadAuthBody, err)
		}
		for k, vs := range v {
			if err := checkField(k, vs[0]); err != nil {
				return Answers{}, err
			}
			a.Fields[k] = vs[0]
		}
		return a, nil
	}
	var doc ConfigAuth
	if err := decodeOne(trimmed, &doc); err != nil {
		return Answers{}, err
	}
	if doc.Type != DocInit && doc.Type != DocAuthReply {
		return Answers{}, fmt.Errorf("%w: a client document of type %q", ErrBadAuthBody, clip(doc.Type))
	}
	a.Type, a.XML, a.Group = doc.Type, true, doc.GroupSelect
	if doc.Auth != nil {
		for _, f := range doc.Auth.Fields {
			if err := checkField(f.XMLName.Local, f.Text); err != nil {
				return Answers{}, err
			}
			a.Fields[f.XMLName.Local] = f.Text
		}
	}
	return a, nil
}

func checkField(name, value string) error {
	if name == "" || len(name) > 64 || len(value) > maxField {
		return fmt.Errorf("%w: field %q too long or unnamed", ErrBadAuthBody, clip(name))
	}
	if !utf8.ValidString(value) || strings.ContainsRune(value, 0) {
		return fmt.Errorf("%w: field %q is not text", ErrBadAuthBody, clip(name))
	}
	return nil
}

// decodeOne decodes exactly one XML document into v.
func decodeOne(b []byte, v *ConfigAuth) error {
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadAuthBody, err)
	}
	for {
		tok, err := d.Token()
		if err != nil {
			break
		}
		switch t := tok.(type) {
		case xml.CharData:
			if len(bytes.TrimSpace(t)) == 0 {
				continue
			}
		case xml.Comment, xml.ProcInst:
			continue
		}
		return fmt.Errorf("%w: content after the document", ErrBadAuthBody)
	}
	return nil
}

// ParseServerDoc parses a server's config-auth document (auth-request or
// complete), as a client reads it.
func ParseServerDoc(body []byte) (*ConfigAuth, error) {
	var doc ConfigAuth
	if err := decodeOne(bytes.TrimSpace(body), &doc); err != nil {
		return nil, err
	}
	if doc.Type != DocAuthRequest && doc.Type != DocComplete {
		return nil, fmt.Errorf("%w: a server document of type %q", ErrBadAuthBody, clip(doc.Type))
	}
	return &doc, nil
}

// Marshal renders a document with its XML declaration.
func (d *ConfigAuth) Marshal() []byte {
	b, err := xml.Marshal(d)
	if err != nil {
		// Only unsupported types fail, and ConfigAuth has none.
		panic(err)
	}
	return append([]byte(xml.Header), b...)
}

// LoginForm is the server's auth-request asking for a user name and a
// password in one form. msg, if any, is shown to the user (a failed
// attempt's reason).
func LoginForm(server, msg string) *ConfigAuth {
	return &ConfigAuth{
		Client: "vpn", Type: DocAuthRequest, Aggregate: "2",
		Version: &Version{Who: "sg", Text: server},
		Auth: &AuthBlock{
			ID:      "main",
			Message: orDefault(msg, "Please enter your username and password."),
			Form: &Form{Method: "post", Action: "/auth", Inputs: []Input{
				{Type: "text", Name: "username", Label: "Username:"},
				{Type: "password", Name: "password", Label: "Password:"},
			}},
		},
	}
}

// LoginComplete is the server's "complete" document.
func LoginComplete(server, banner string) *ConfigAuth {
	return &ConfigAuth{
		Client: "vpn", Type: DocComplete, Aggregate: "2",
		Version: &Version{Who: "sg", Text: server},
		Auth:    &AuthBlock{ID: "success", Title: "SSL VPN Service", Banner: banner},
	}
}

// ClientInit is the client's first document.
func ClientInit(version, url string) *ConfigAuth {
	return &ConfigAuth{
		Client: "vpn", Type: DocInit, Aggregate: "2",
		Version:  &Version{Who: "vpn", Text: version},
		DeviceID: "linux-64", GroupAccess: url,
	}
}

// ClientReply is the client's answer to a form: one field per input, in
// the form's order, with the values of fields (and of hidden inputs).
func ClientReply(version string, form *Form, fields map[string]string, opaque *InnerXML) *ConfigAuth {
	doc := &ConfigAuth{
		Client: "vpn", Type: DocAuthReply, Aggregate: "2",
		Version:  &Version{Who: "vpn", Text: version},
		DeviceID: "linux-64", Opaque: opaque, Auth: &AuthBlock{},
	}
	for _, in := range form.Inputs {
		if !xmlName(in.Name) {
			// Nothing to answer it with (encoding/xml would name an
			// unnamed element after the Go field).
			continue
		}
		v, ok := fields[in.Name]
		if !ok {
			v = in.Value
		}
		doc.Auth.Fields = append(doc.Auth.Fields, Field{XMLName: xml.Name{Local: in.Name}, Text: v})
	}
	return doc
}

// xmlName reports whether s can name an element: letters, digits, '-',
// '_' and '.', not starting with a digit, '-' or '.'.
func xmlName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '_':
		case i > 0 && (r >= '0' && r <= '9' || r == '-' || r == '.'):
		default:
			return false
		}
	}
	return true
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
