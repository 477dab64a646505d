package bench

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func testLayout() ocLayout {
	return newOCLayout(3, netip.MustParseAddr("198.18.0.2"), "pbab12")
}

func TestOCLayout(t *testing.T) {
	l := testLayout()
	if l.pool.String() != "100.64.3.0/24" || l.serverAddr.String() != "100.64.3.1" || l.port != 4433 ||
		l.serverIf != "pbab123s" || l.clientIf != "pbab123c" || l.url() != "https://198.18.0.2:4433/" {
		t.Fatalf("layout %+v, url %s", l, l.url())
	}
}

// TestOcservConfig: PSK-only DTLS on the TLS port, or no UDP port at
// all; the candidate's pool; paths in the candidate's folder; bans and
// rate limits off.
func TestOcservConfig(t *testing.T) {
	l := testLayout()
	dtls := ocservConfig("/tmp/d", l, true)
	for _, want := range []string{
		`auth = "plain[passwd=/tmp/d/ocpasswd]"`, "listen-host = 198.18.0.2", "tcp-port = 4433", "udp-port = 4433",
		"dtls-psk = true", "dtls-legacy = false", "ipv4-network = 100.64.3.0/24", "device = pbab123s",
		"server-cert = /tmp/d/cert.pem", "server-key = /tmp/d/key.pem", "socket-file = /tmp/d/ocserv.socket",
		"max-ban-score = 0", "rate-limit-ms = 0", "isolate-workers = false",
		`tls-priorities = "NORMAL:%SERVER_PRECEDENCE:%COMPAT"`,
	} {
		if !strings.Contains(dtls, want+"\n") {
			t.Errorf("DTLS config lacks %q:\n%s", want, dtls)
		}
	}
	tls := ocservConfig("/tmp/d", l, false)
	if strings.Contains(tls, "udp-port") || !strings.Contains(tls, "tcp-port = 4433\n") {
		t.Errorf("CSTP-only config:\n%s", tls)
	}
	for _, line := range strings.Split(strings.TrimSpace(dtls), "\n") {
		if k, _, ok := strings.Cut(line, " = "); !ok || strings.TrimSpace(k) != k {
			t.Errorf("malformed line %q", line)
		}
	}
}

// TestOcservConfigParses has ocserv check the configuration (ocserv -t),
// with the files it names, where ocserv is installed.
func TestOcservConfigParses(t *testing.T) {
	ocserv, err := exec.LookPath("ocserv")
	if err != nil {
		t.Skip("needs ocserv (Debian package ocserv)")
	}
	dir := t.TempDir()
	l := testLayout()
	if _, err := writeCert(dir, l.underlay); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ocpasswd"), []byte("bench:*:$5$x$y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dtls := range []bool{true, false} {
		conf := filepath.Join(dir, "ocserv.conf")
		if err := os.WriteFile(conf, []byte(ocservConfig(dir, l, dtls)), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(ocserv, "-t", "-c", conf).CombinedOutput(); err != nil {
			t.Errorf("ocserv -t (DTLS %v): %v\n%s", dtls, err, out)
		}
	}
}

func TestGatewayInitArgs(t *testing.T) {
	got := strings.Join(gatewayInitArgs("/tmp/d/gateway", testLayout()), " ")
	want := "gateway init --state /tmp/d/gateway --name bench --interface pbab123s --endpoint 198.18.0.2:51823" +
		" --api 198.18.0.2:8403 --admin off --tls 198.18.0.2:4433 --pool 100.64.3.0/24 --route 100.64.3.1/32 --mtu 1420"
	if got != want {
		t.Errorf("gateway init args\n %s\nwant\n %s", got, want)
	}
}

func TestOpenconnectArgs(t *testing.T) {
	l := testLayout()
	dtls := strings.Join(openconnectArgs(openConnectByName("ptun-openconnect-dtls"), l, "pin-sha256:abc=", "/tmp/d/connect.sh"), " ")
	want := "openconnect --non-inter --passwd-on-stdin -u bench --servercert pin-sha256:abc= -i pbab123c -s /tmp/d/connect.sh https://198.18.0.2:4433/"
	if dtls != want {
		t.Errorf("DTLS args\n %s\nwant\n %s", dtls, want)
	}
	for _, name := range []string{"ptun-openconnect-tls", "ocserv-tls"} {
		a := openconnectArgs(openConnectByName(name), l, "pin-sha256:abc=", "/tmp/d/connect.sh")
		if !slices.Contains(a, "--no-dtls") || a[len(a)-1] != l.url() {
			t.Errorf("%s: args %q, want --no-dtls before the URL", name, a)
		}
	}
}

func TestPtunConnectArgs(t *testing.T) {
	l := testLayout()
	got := strings.Join(ptunConnectArgs(openConnectByName("ptun-dtls"), l, "/usr/bin/ptun", "pin-sha256:abc=", "/tmp/d/client"), " ")
	want := "/usr/bin/ptun connect https://198.18.0.2:4433/ --user bench --servercert pin-sha256:abc= --name pbab123c --state /tmp/d/client --foreground"
	if got != want {
		t.Errorf("DTLS args\n %s\nwant\n %s", got, want)
	}
	if a := ptunConnectArgs(openConnectByName("ptun-tls"), l, "/usr/bin/ptun", "pin-sha256:abc=", "/tmp/d/client"); a[len(a)-1] != "--no-dtls" {
		t.Errorf("ptun-tls: args %q, want --no-dtls", a)
	}
	// The interface ptun connect makes, pt-NAME, fits IFNAMSIZ.
	if n := len("pt-" + l.clientIf); n > 15 {
		t.Errorf("the client's interface pt-%s has %d bytes, more than 15", l.clientIf, n)
	}
	for _, o := range OpenConnectCandidates {
		if o.Client != ClientPtun && o.Client != ClientOpenconnect || o.Server != ServerPtun && o.Server != ServerOcserv {
			t.Errorf("%s: server %q, client %q", o.Name, o.Server, o.Client)
		}
		if strings.HasPrefix(o.Name, "ptun-openconnect-") != (o.Server == ServerPtun && o.Client == ClientOpenconnect) {
			t.Errorf("%s: server %q, client %q: the name does not say so", o.Name, o.Server, o.Client)
		}
	}
}

// TestConnectScript runs the script as openconnect would, with ip
// replaced by a stub that logs its arguments: a connect sets the tun up
// and routes the server's address, and writes the environment; other
// reasons do nothing.
func TestConnectScript(t *testing.T) {
	dir := t.TempDir()
	l := testLayout()
	envFile := filepath.Join(dir, "it's.env") // a quote in the path
	script := filepath.Join(dir, "connect.sh")
	if err := os.WriteFile(script, []byte(connectScript(l, envFile)), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	ipLog := filepath.Join(dir, "ip.log")
	if err := os.WriteFile(filepath.Join(bin, "ip"), []byte("#!/bin/sh\necho \"$@\" >> '"+ipLog+"'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(reason string) {
		cmd := exec.Command("/bin/sh", "-c", script)
		cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin", "reason=" + reason, "TUNDEV=pbab123c",
			"INTERNAL_IP4_ADDRESS=100.64.3.55", "INTERNAL_IP4_MTU=1414"}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", reason, err, out)
		}
	}
	run("pre-init")
	if _, err := os.Stat(envFile); err == nil {
		t.Fatal("pre-init wrote the environment")
	}
	run("connect")
	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	if env := parseEnv(b); env["INTERNAL_IP4_ADDRESS"] != "100.64.3.55" || env["TUNDEV"] != "pbab123c" {
		t.Errorf("environment written: %v", env)
	}
	log, _ := os.ReadFile(ipLog)
	want := "link set dev pbab123c up mtu 1414\naddr add 100.64.3.55/32 dev pbab123c\nroute add 100.64.3.1/32 dev pbab123c\n"
	if string(log) != want {
		t.Errorf("ip calls:\n%s\nwant:\n%s", log, want)
	}
	run("disconnect")
	if log2, _ := os.ReadFile(ipLog); !bytes.Equal(log, log2) {
		t.Error("disconnect called ip")
	}
}

func TestWriteCert(t *testing.T) {
	dir := t.TempDir()
	pin, err := writeCert(dir, netip.MustParseAddr("198.18.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pin, "pin-sha256:") || len(pin) != len("pin-sha256:")+44 {
		t.Fatalf("pin %q", pin)
	}
	if again, err := pinOfFile(filepath.Join(dir, "cert.pem")); err != nil || again != pin {
		t.Fatalf("pinOfFile = %q, %v; want %q", again, err, pin)
	}
	if st, err := os.Stat(filepath.Join(dir, "key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem: %v, %v", st, err)
	}
	if _, err := pinOfFile(filepath.Join(dir, "key.pem")); err == nil {
		t.Fatal("pinOfFile took a key for a certificate")
	}
}

func TestPathProblems(t *testing.T) {
	for line, want := range map[string]bool{
		"Established DTLS connection (using GnuTLS). Ciphersuite (DTLS1.2)-(PSK)-(AES-128-GCM).": true,
		"DTLS Dead Peer Detection detected dead peer!":                                           true,
		"Got CONNECT response: HTTP/1.1 200 CONNECTED":                                           false,
		"CSTP connected. DPD 30, Keepalive 20":                                                   false,
		"SSL negotiation with 198.18.0.2":                                                        false,
		"Reconnect failed":                                                                       true,
	} {
		if got := isPathLine(line); got != want {
			t.Errorf("isPathLine(%q) = %v", line, got)
		}
	}
}

func TestOpenConnectOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"unknown", Options{OpenConnect: []string{"anyconnect"}}, `unknown OpenConnect candidate "anyconnect"`},
		{"twice", Options{OpenConnect: []string{"ptun-tls", "ptun-tls"}}, `"ptun-tls" given twice`},
		{"peer's name", Options{OpenConnect: []string{"ocserv-tls"}, Peers: []Peer{{"ocserv-tls", []string{"x"}}}}, `"ocserv-tls" given twice`},
	} {
		o := tc.o
		if err := o.setDefaults(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	o := Options{OpenConnect: OpenConnectNames()}
	if err := o.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(OpenConnectNames(), " "); got != "ptun-dtls ptun-tls ptun-openconnect-dtls ptun-openconnect-tls ocserv-dtls ocserv-tls" {
		t.Fatalf("names %q", got)
	}
	var none Options
	if none.setDefaults(); len(none.OpenConnect) != 0 {
		t.Fatalf("OpenConnect candidates by default: %q", none.OpenConnect)
	}
	for _, c := range OpenConnectCandidates {
		for _, v := range c.Versus {
			if v != "ptun" && openConnectByName(v) == nil {
				t.Errorf("%s is compared with %q, no candidate", c.Name, v)
			}
		}
	}
}

func TestCheckTools(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	err := openConnectByName("ocserv-dtls").checkTools()
	if err == nil || !strings.Contains(err.Error(), "apt-get install openconnect") {
		t.Fatalf("checkTools with an empty PATH: %v", err)
	}
}

func TestLabelOf(t *testing.T) {
	for _, tc := range []struct {
		args []string
		comm string
		want string
	}{
		{[]string{"/tmp/go-build1/exe/ptun", "gateway", "run", "--state", "/tmp/x"}, "exe", "ptun gateway run"},
		{[]string{"/tmp/go-build1/exe/ptun", "--tls-engine-of", "pb12s-tls", "--confined"}, "ptun", "ptun --tls-engine-of"},
		{[]string{"/usr/sbin/ocserv-worker", "-f", "-d", "1"}, "ocserv-worker", "ocserv-worker"},
		{[]string{"ocserv"}, "ocserv-main", "ocserv-main"},
		{[]string{"openconnect", "--non-inter"}, "", "openconnect"},
	} {
		if got := labelOf(tc.args, tc.comm, "/tmp/go-build2/exe/ptun"); got != tc.want {
			t.Errorf("labelOf(%q, %q) = %q, want %q", tc.args, tc.comm, got, tc.want)
		}
	}
}

// TestCoresNotes: each process's share of a core, summed over processes
// of one label, median over rounds, the busiest first.
func TestCoresNotes(t *testing.T) {
	c := &candidate{}
	self := os.Getpid()
	c.noteCores("TCP up", map[int]uint64{self: 100}, map[int]uint64{self: 150}, time.Second)
	c.noteCores("TCP up", map[int]uint64{self: 150}, map[int]uint64{self: 250}, time.Second)
	c.noteCores("TCP up", map[int]uint64{self: 250}, map[int]uint64{self: 320}, time.Second)
	c.noteCores("TCP down", nil, map[int]uint64{self: 10}, 2*time.Second)
	notes := c.coresNotes()
	label := processLabel(self, "")
	want := []string{"cores used during TCP up (median): " + label + " 0.70", "cores used during TCP down (median): " + label + " 0.05"}
	if !slices.Equal(notes, want) {
		t.Fatalf("notes %q, want %q", notes, want)
	}
}

// TestSettle returns at once for idle processes, and notes a process that
// stays busy.
func TestSettle(t *testing.T) {
	idle := exec.Command("sleep", "30")
	busy := exec.Command("sh", "-c", "while :; do :; done")
	for _, cmd := range []*exec.Cmd{idle, busy} {
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	c := &candidate{res: &CandidateResult{}}
	c.pids[0] = []int{idle.Process.Pid}
	start := time.Now()
	c.settle(context.Background(), "UDP up", 1, 2*time.Second)
	if took := time.Since(start); took > 2*time.Second || len(c.res.Errors) != 0 {
		t.Fatalf("idle: took %v, errors %q", took, c.res.Errors)
	}
	c.pids[1] = []int{busy.Process.Pid}
	c.settle(context.Background(), "UDP up", 2, 1500*time.Millisecond)
	if len(c.res.Errors) != 1 || !strings.Contains(c.res.Errors[0], "round 2, UDP up: the tunnel's processes stayed busy") ||
		!strings.Contains(c.res.Errors[0], "the next test started anyway") {
		t.Fatalf("busy: errors %q", c.res.Errors)
	}
}
