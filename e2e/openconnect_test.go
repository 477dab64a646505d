package e2e

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ptun-vpn/ptun/internal/testenv"
)

// Debian's openconnect client against ptun's gateway (its OpenConnect
// engine on TCP and UDP 443): password login, the pushed address, routes
// and DNS, traffic to the lan host over DTLS and over CSTP alone, access
// rules in the data path, revocation.

const ocPassword = "correct horse battery staple"

// ocScript is openconnect's network setup script: it brings the tunnel up
// with what the gateway pushed, routes the split includes through it, and
// keeps the environment of each call for the test to read.
const ocScript = `#!/bin/sh
env > "$OC_ENV_DIR/.env.$reason"
case "$reason" in
connect)
	ip link set dev "$TUNDEV" up mtu "$INTERNAL_IP4_MTU"
	ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
	i=0
	while [ "$i" -lt "${CISCO_SPLIT_INC:-0}" ]; do
		eval a=\$CISCO_SPLIT_INC_${i}_ADDR m=\$CISCO_SPLIT_INC_${i}_MASKLEN
		ip route add "$a/$m" dev "$TUNDEV"
		i=$((i+1))
	done
	;;
esac
# Written last: the test waits for it to know the tunnel is set up.
mv "$OC_ENV_DIR/.env.$reason" "$OC_ENV_DIR/env.$reason"
exit 0
`

type ocRun struct {
	cmd    *exec.Cmd
	out    string // its log
	envDir string
	done   chan struct{}
}

func (r *ocRun) env(t *testing.T, reason string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.envDir, "env."+reason))
	if err != nil {
		return nil
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

func (r *ocRun) log() string {
	b, _ := os.ReadFile(r.out)
	return string(b)
}

// startOC runs openconnect in ns against url until the test ends, and
// waits for its tunnel to be set up.
func startOC(t *testing.T, ns, ifname, url, pin string, extra ...string) *ocRun {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "script.sh")
	if err := os.WriteFile(script, []byte(ocScript), 0o755); err != nil {
		t.Fatal(err)
	}
	r := &ocRun{out: filepath.Join(dir, "openconnect.log"), envDir: dir, done: make(chan struct{})}
	args := append([]string{"openconnect", "--non-inter", "--passwd-on-stdin", "-u", "alice",
		"--servercert", pin, "-i", ifname, "-s", script}, extra...)
	args = append(args, url)
	r.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	r.cmd.Env = append(os.Environ(), "OC_ENV_DIR="+dir)
	r.cmd.Stdin = strings.NewReader(ocPassword + "\n")
	f, err := os.Create(r.out)
	if err != nil {
		t.Fatal(err)
	}
	r.cmd.Stdout, r.cmd.Stderr = f, f
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); f.Close(); close(r.done) }()
	t.Cleanup(func() {
		r.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			r.cmd.Process.Kill()
			<-r.done
		}
		if t.Failed() {
			t.Logf("openconnect log:\n%s", r.log())
		}
	})
	waitFor(t, 20*time.Second, "openconnect's tunnel", func() (bool, string) {
		select {
		case <-r.done:
			t.Fatalf("openconnect exited:\n%s", r.log())
		default:
		}
		return r.env(t, "connect") != nil, r.log()
	})
	return r
}

// gatewayPin is the pin of the gateway's certificate in state.
func gatewayPin(t *testing.T, state string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(state, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "pin-sha256:" + base64.StdEncoding.EncodeToString(sum[:])
}

type tlsDevice struct {
	User, Name, Protocol, Path string
	Online                     bool
	RxBytes                    uint64 `json:"rx_bytes"`
	TxBytes                    uint64 `json:"tx_bytes"`
	DTLSRxBytes                uint64 `json:"dtls_rx_bytes"`
	DTLSTxBytes                uint64 `json:"dtls_tx_bytes"`
	DropACL                    uint64 `json:"drop_acl"`
}

// tlsDevices reads `ptun gateway devices --json` for the openconnect ones.
func tlsDevices(t *testing.T, ns, state string) map[string]tlsDevice {
	t.Helper()
	out := mustRun(t, ns, ptun.bin, "gateway", "devices", "--json", "--state", state)
	var all []tlsDevice
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		t.Fatalf("devices --json: %v\n%s", err, out)
	}
	m := map[string]tlsDevice{}
	for _, d := range all {
		if d.Protocol == "openconnect" {
			m[d.User+"/"+d.Name] = d
		}
	}
	return m
}

func TestOpenconnectToGateway(t *testing.T) {
	testenv.RequireTool(t, "openconnect", "openconnect")
	l := newLab(t)
	lan := l.addLan(t)
	// The client namespace's resolver file, which ptun connect rewrites
	// (without one it would be the host's).
	nsEtc := filepath.Join("/etc/netns", l.client.ns)
	os.MkdirAll(nsEtc, 0o755)
	t.Cleanup(func() { os.RemoveAll(nsEtc) })
	os.WriteFile(filepath.Join(nsEtc, "resolv.conf"), []byte("nameserver 198.18.0.53\n"), 0o644)
	dir := t.TempDir()
	state := filepath.Join(dir, "gw")
	iface := "pgw" + l.id
	mustRun(t, l.server.ns, ptun.bin, "gateway", "init", "--state", state, "--interface", iface,
		"--endpoint", l.server.link4.String()+":51820", "--api", l.server.link4.String()+":8443",
		"--tls", ":443", "--pool", "100.81.0.0/16", "--route", "198.18.2.0/24", "--dns", "198.18.2.53",
		"--search", "corp.test", "--masquerade", "--metrics", "127.0.0.1:9597")
	mustRun(t, l.server.ns, ptun.bin, "gateway", "user", "add", "alice", "--group", "eng", "--state", state)
	cmd := exec.Command("ip", "netns", "exec", l.server.ns, ptun.bin, "gateway", "user", "passwd", "alice", "--state", state)
	cmd.Stdin = strings.NewReader(ocPassword + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("user passwd: %v\n%s", err, out)
	}
	startGateway(t, l.server.ns, state)
	waitFor(t, 10*time.Second, "the TLS port", func() (bool, string) {
		out, err := run(l.server.ns, "ss", "-Hltn", "sport = :443")
		return err == nil && strings.Contains(out, "443"), out
	})
	pin := gatewayPin(t, state)
	url := "https://" + l.server.link4.String() + "/"
	lanAddr := netip.MustParseAddr("198.18.2.2")

	t.Run("DTLS", func(t *testing.T) {
		oc := startOC(t, l.client.ns, "oc"+l.id, url, pin)
		env := oc.env(t, "connect")
		addr, err := netip.ParseAddr(env["INTERNAL_IP4_ADDRESS"])
		if err != nil || !netip.MustParsePrefix("100.81.0.0/16").Contains(addr) {
			t.Fatalf("pushed address %q, want one of the pool 100.81.0.0/16", env["INTERNAL_IP4_ADDRESS"])
		}
		for k, want := range map[string]string{"INTERNAL_IP4_DNS": "198.18.2.53", "CISCO_DEF_DOMAIN": "corp.test",
			"CISCO_SPLIT_INC": "1", "CISCO_SPLIT_INC_0_ADDR": "198.18.2.0", "CISCO_SPLIT_INC_0_MASKLEN": "24"} {
			if env[k] != want {
				t.Errorf("%s = %q, want %q", k, env[k], want)
			}
		}
		waitFor(t, 15*time.Second, "DTLS", func() (bool, string) {
			return strings.Contains(oc.log(), "Established DTLS connection"), oc.log()
		})
		mustRun(t, l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", lanAddr.String())
		up := iperf3(t, l.client, lan, lanAddr, "-t", "2")
		down := iperf3(t, l.client, lan, lanAddr, "-t", "2", "-R")
		udp := iperf3(t, l.client, lan, lanAddr, "-t", "2", "-u", "-b", "100M")
		t.Logf("over DTLS: TCP up %.0f Mbit/s, down %.0f Mbit/s; UDP at 100 Mbit/s %.0f Mbit/s received",
			up.mbits(), down.mbits(), udp.mbits())
		d := tlsDevices(t, l.server.ns, state)["alice/openconnect"]
		if !d.Online || d.Path != "dtls" || d.DTLSRxBytes < 1<<20 || d.DTLSTxBytes < 1<<20 {
			t.Errorf("devices: %+v, want alice/openconnect online on dtls with MBs both ways over DTLS", d)
		}
		m := scrapeIn(t, l.server.ns, "127.0.0.1:9597")
		if v := metricValue(m, "ptun_tls_sessions", "path", "dtls"); v != 1 {
			t.Errorf("ptun_tls_sessions{path=dtls} = %v, want 1", v)
		}
		if v := metricValue(m, "ptun_tls_device_receive_bytes_total", "device", "openconnect"); v < 1<<20 {
			t.Errorf("ptun_tls_device_receive_bytes_total = %v, want MBs", v)
		}
		if v := metricValue(m, "ptun_tls_logins_total", "result", "ok"); v < 1 {
			t.Errorf("ptun_tls_logins_total{result=ok} = %v", v)
		}

		// The DTLS path goes silent (the gateway's host drops UDP 443 both
		// ways; the client sees no error): traffic moves to CSTP.
		mustRun(t, l.server.ns, "nft", "add table inet ptun_e2e_oc; "+
			"add chain inet ptun_e2e_oc in { type filter hook input priority 0; }; add rule inet ptun_e2e_oc in udp dport 443 drop; "+
			"add chain inet ptun_e2e_oc out { type filter hook output priority 0; }; add rule inet ptun_e2e_oc out udp sport 443 drop")
		t.Cleanup(func() { run(l.server.ns, "nft", "delete", "table", "inet", "ptun_e2e_oc") })
		silent := time.Now()
		waitFor(t, 60*time.Second, "traffic on CSTP with UDP blocked", func() (bool, string) {
			out, err := run(l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", lanAddr.String())
			return err == nil && tlsDevices(t, l.server.ns, state)["alice/openconnect"].Path == "cstp", out
		})
		t.Logf("with UDP silent, traffic flowed on CSTP %v later (the gateway pushes a DTLS DPD of 5 s)", time.Since(silent).Round(100*time.Millisecond))
		mustRun(t, l.server.ns, "nft", "delete", "table", "inet", "ptun_e2e_oc")

		// The engine dies: a new one takes over, openconnect reconnects with
		// its cookie and keeps its address (it would quit otherwise).
		pid := tlsEnginePID(t, iface)
		if pid <= 0 {
			t.Fatal("no OpenConnect engine process found")
		}
		syscall.Kill(pid, syscall.SIGKILL)
		killed := time.Now()
		waitFor(t, 60*time.Second, "traffic after the engine restart", func() (bool, string) {
			out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", lanAddr.String())
			next := tlsEnginePID(t, iface)
			return err == nil && next > 0 && next != pid, out
		})
		t.Logf("traffic resumed %v after the engine was killed", time.Since(killed).Round(100*time.Millisecond))
		if env := oc.env(t, "reconnect"); env == nil {
			t.Errorf("openconnect did not reconnect (no reconnect call of its script):\n%s", oc.log())
		}
		if v := metricValue(scrapeIn(t, l.server.ns, "127.0.0.1:9597"), "ptun_tls_engine_restarts_total", "", ""); v != 1 {
			t.Errorf("ptun_tls_engine_restarts_total = %v, want 1", v)
		}
	})

	// ptun's own client against ptun's gateway, both paths.
	for _, via := range []struct {
		name  string
		extra []string
	}{{"PtunConnectDTLS", nil}, {"PtunConnectCSTP", []string{"--no-dtls"}}} {
		t.Run(via.name, func(t *testing.T) {
			name, cstate := "c"+l.id, filepath.Join(t.TempDir(), "state")
			logFile := filepath.Join(t.TempDir(), "connect.log")
			t.Cleanup(func() {
				run(l.client.ns, ptun.bin, "down", name, "--state", cstate)
				if t.Failed() {
					b, _ := os.ReadFile(logFile)
					t.Logf("ptun connect log:\n%s", b)
				}
			})
			const clientMetrics = "127.0.0.1:9598"
			args := append([]string{url, "--user", "alice", "--servercert", pin, "--name", name,
				"--state", cstate, "--log", logFile, "--metrics", clientMetrics}, via.extra...)
			if out, err := ptunConnect(t, l.client.ns, ocPassword, args...); err != nil {
				t.Fatalf("ptun connect: %v\n%s", err, out)
			}
			want := "dtls"
			if via.extra != nil {
				want = "cstp"
			}
			waitFor(t, 15*time.Second, "the path "+want, func() (bool, string) {
				out, _ := run(l.client.ns, ptun.bin, "status", name, "--state", cstate)
				return strings.Contains(out, "path "+want), out
			})
			mustRun(t, l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", lanAddr.String())
			up := iperf3(t, l.client, lan, lanAddr, "-t", "2")
			down := iperf3(t, l.client, lan, lanAddr, "-t", "2", "-R")
			t.Logf("ptun connect over %s: TCP up %.0f Mbit/s, down %.0f Mbit/s (down/up %.2f)", want, up.mbits(), down.mbits(), down.mbits()/up.mbits())
			// The client's metrics: the session up on its path, and
			// the transfer's bytes counted on it.
			m := scrapeIn(t, l.client.ns, clientMetrics)
			iface := map[string]string{"interface": "pt-" + name}
			if v := seriesOf(t, m, "ptun_session_up", iface).GetGauge().GetValue(); v != 1 {
				t.Errorf("ptun_session_up = %v, want 1", v)
			}
			onPath := map[string]string{"interface": "pt-" + name, "path": want}
			if v := seriesOf(t, m, "ptun_session_path", onPath).GetGauge().GetValue(); v != 1 {
				t.Errorf("ptun_session_path{path=%s} = %v, want 1", want, v)
			}
			for _, dir := range []string{"ptun_session_sent_bytes_total", "ptun_session_received_bytes_total"} {
				if v := seriesOf(t, m, dir, onPath).GetCounter().GetValue(); v < 1<<20 {
					t.Errorf("%s{path=%s} = %v after two transfers, want more than 1 MiB", dir, want, v)
				}
			}
			if code, rep := healthIn(t, l.client.ns, clientMetrics); code != http.StatusOK {
				t.Errorf("the client's /healthz: %d %+v", code, rep)
			}
			waitFor(t, 5*time.Second, "the gateway's listing", func() (bool, string) {
				d := tlsDevices(t, l.server.ns, state)["alice/openconnect"]
				return d.Online && d.Path == want && d.RxBytes > 1<<20, fmt.Sprintf("%+v", d)
			})
			mustRun(t, l.client.ns, ptun.bin, "down", name, "--state", cstate)
		})
	}

	t.Run("CSTP", func(t *testing.T) {
		oc := startOC(t, l.client.ns, "oc"+l.id, url, pin, "--no-dtls")
		mustRun(t, l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", lanAddr.String())
		up := iperf3(t, l.client, lan, lanAddr, "-t", "2")
		down := iperf3(t, l.client, lan, lanAddr, "-t", "2", "-R")
		t.Logf("over CSTP: TCP up %.0f Mbit/s, down %.0f Mbit/s (down/up %.2f)", up.mbits(), down.mbits(), down.mbits()/up.mbits())
		d := tlsDevices(t, l.server.ns, state)["alice/openconnect"]
		if d.Path != "cstp" || d.DTLSRxBytes != 0 || d.RxBytes < 1<<20 {
			t.Errorf("devices: %+v, want the traffic on cstp and none on DTLS", d)
		}

		// An access rule: eng may reach tcp/22 only; the ping is dropped
		// in the engine's data path and counted.
		out := mustRun(t, l.server.ns, ptun.bin, "gateway", "allow", "eng", "198.18.2.2", "tcp/22", "--state", state)
		var ruleID string
		fmt.Sscanf(out, "rule %s", &ruleID)
		ruleID = strings.TrimSuffix(ruleID, ":")
		waitFor(t, 5*time.Second, "the rule to refuse the ping", func() (bool, string) {
			out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", lanAddr.String())
			return err != nil, out
		})
		// The listing's figures are the gateway's of the last second.
		waitFor(t, 5*time.Second, "the refused ping counted as drop_acl", func() (bool, string) {
			d := tlsDevices(t, l.server.ns, state)["alice/openconnect"]
			return d.DropACL > 0, fmt.Sprintf("%+v", d)
		})
		mustRun(t, l.server.ns, ptun.bin, "gateway", "rules", "--remove", ruleID, "--state", state)
		waitFor(t, 5*time.Second, "the ping to pass again", func() (bool, string) {
			out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", lanAddr.String())
			return err == nil, out
		})

		// Revocation: traffic stops within a second, and openconnect is told.
		devs := mustRun(t, l.server.ns, ptun.bin, "gateway", "devices", "--state", state)
		if !strings.Contains(devs, "openconnect") {
			t.Fatalf("devices:\n%s", devs)
		}
		mustRun(t, l.server.ns, ptun.bin, "gateway", "revoke", "alice/openconnect", "--state", state)
		revoked := time.Now()
		waitFor(t, 3*time.Second, "the revoked device's traffic to stop", func() (bool, string) {
			out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", lanAddr.String())
			return err != nil, out
		})
		t.Logf("traffic stopped %v after the revoke", time.Since(revoked).Round(time.Millisecond))
		select {
		case <-oc.done:
		case <-time.After(10 * time.Second):
			t.Error("openconnect did not exit after the revoke")
		}
	})
}

// tlsEnginePID finds the OpenConnect engine of the gateway with tunnel
// interface iface (it runs in namespaces of its own, so by its command line).
func tlsEnginePID(t *testing.T, iface string) int {
	t.Helper()
	want := "--tls-engine-of\x00" + iface[:min(len(iface), 11)] + "-tls\x00--confined"
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), want) {
			return pid
		}
	}
	return 0
}

// metricValue is the value of the first sample of family name whose label
// has value (any sample with label ""), or -1.
func metricValue(m map[string]*dto.MetricFamily, name, label, value string) float64 {
	f := m[name]
	if f == nil {
		return -1
	}
	for _, s := range f.Metric {
		ok := label == ""
		for _, lp := range s.Label {
			if lp.GetName() == label && lp.GetValue() == value {
				ok = true
			}
		}
		if !ok {
			continue
		}
		switch {
		case s.Counter != nil:
			return s.Counter.GetValue()
		case s.Gauge != nil:
			return s.Gauge.GetValue()
		}
	}
	return -1
}
