package e2e

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/makiuchi-d/gozxing"
	"github.com/makiuchi-d/gozxing/qrcode"

	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/registry"
	"github.com/ptun-vpn/ptun/internal/testenv"
)

// maxFirstLoad is the most the admin page may transfer on its first load
// (every byte the browser receives, headers included).
const maxFirstLoad = 200 << 10

// TestAdminPage drives the gateway's admin page in a real Chromium, as an
// admin would: the gateway runs in the lab's server namespace with its
// admin listener on a management network (HTTPS with the gateway's own
// certificate, which Chromium accepts by its pin alone), and Chromium
// runs in a namespace of its own on that network. (Not in the gateway's:
// Chromium drops its connections, and fails the requests under way, when
// the addresses of its host change, as they do there while the gateway
// and the client's tunnel come up.)
//
// It measures the first load (bytes and time to the login form; the
// bytes must stay under 200 KB), logs in, reloads (the session and its
// CSRF token come back from whoami), adds a user, makes an invite and
// reads its URL (and its QR code) from the page and withdraws another,
// enrolls a real client with the URL and sees the device online with its
// bytes rising while it pings the lan, renames it, adds and removes an
// access rule, adds another and sees the pings it refuses counted as
// drop_acl on the overview (whose charts are drawn), revokes the device
// through the page's confirmation and sees its traffic stop, and finds
// every step in the audit page, by admin and filtered by user. Markup in stored strings (an audit entry's
// detail) and in error messages (a user name, a rule) shows as text, with
// no element made of it; every state-changing request the page made
// carried the CSRF header, and one made without it from the page is
// refused. Any console error, CSP or other browser error, or uncaught
// exception fails the test. A screenshot of each page is kept in a
// folder the test logs ($PTUN_TEST_ARTIFACTS if set).
func TestAdminPage(t *testing.T) {
	requireLab(t)
	chromium := testenv.RequireChromium(t)
	l := newLab(t)
	lan := l.addLan(t)
	mustRun(t, lan.ns, "ip", "route", "add", "default", "via", "198.18.2.1")
	const lanHost, gatewayTunnel = "198.18.2.2", "100.80.0.1"

	admin := l.addManagement(t)

	dir := t.TempDir()
	state := filepath.Join(dir, "gw")
	iface := "pga" + l.id
	mustRun(t, l.server.ns, ptun.bin, "gateway", "init", "--state", state, "--name", "gw1", "--interface", iface,
		"--endpoint", l.server.link4.String()+":51820", "--api", l.server.link4.String()+":8443",
		"--admin", managementGateway+":8444", "--pool", "100.80.0.0/16", "--route", "198.18.2.0/24")
	out := mustRun(t, l.server.ns, ptun.bin, "gateway", "admin", "add", "root", "--generate", "--state", state)
	_, password, _ := strings.Cut(out, "password (shown once, not stored anywhere in clear):\n")
	password, _, _ = strings.Cut(password, "\n")
	if len(password) < 10 {
		t.Fatalf("no generated password in:\n%s", out)
	}
	startGateway(t, l.server.ns, state)
	waitFor(t, 10*time.Second, "the admin listener", func() (bool, string) {
		out, err := run(l.server.ns, "ss", "-Hltn", "sport = :8444")
		return err == nil && strings.Contains(out, "8444"), out
	})
	pin, err := gateway.Pin(state)
	if err != nil {
		t.Fatal(err)
	}
	b := startBrowser(t, chromium, admin.ns, strings.TrimPrefix(pin.String(), "pin-sha256:"))
	const base = "https://" + managementGateway + ":8444"

	// First load, with an empty profile: what it transfers, and how long
	// until the login form can be used.
	b.do(chromedp.Navigate(base + "/"))
	b.waitJS("the login form", `document.documentElement.dataset.ready === "1" && !!document.querySelector("#login input[name=name]")`)
	loaded, n := b.settledBytes()
	readyMs := evalJS[float64](b, `performance.getEntriesByName("ptun-ready")[0].startTime`)
	domMs := evalJS[float64](b, `performance.getEntriesByType("navigation")[0].domInteractive`)
	t.Logf("first load: %d bytes transferred in %d requests; DOM interactive after %.0f ms, login form ready after %.0f ms",
		loaded, n, domMs, readyMs)
	if loaded <= 0 || loaded > maxFirstLoad {
		t.Errorf("the first load transferred %d bytes, want 1 to %d", loaded, maxFirstLoad)
	}
	b.shot("login")

	// Log in; a reload keeps the session.
	b.do(chromedp.SendKeys(chromedp.CSS("#login input[name=name]"), "root"),
		chromedp.SendKeys(chromedp.CSS("#login input[name=password]"), password),
		chromedp.Click(chromedp.CSS("#login button[type=submit]")))
	b.waitJS("the overview", `!!document.querySelector("#view[data-page=overview] #stats .stat")`)
	b.do(chromedp.Reload())
	b.waitJS("the overview after a reload", `!!document.querySelector("#view[data-page=overview] #stats .stat") && document.getElementById("who").textContent === "root"`)

	// Users: add alice in eng; a name with markup is refused, and its
	// error shows as text.
	b.page("users", "#add-user")
	b.do(chromedp.SetValue(chromedp.CSS("#add-user input[name=name]"), "alice"),
		chromedp.SetValue(chromedp.CSS("#add-user input[name=groups]"), "eng"),
		chromedp.Click(chromedp.CSS("#add-user button")))
	b.waitJS("alice in the users", `!!document.querySelector('#users tr[data-user="alice"] .chip[data-group="eng"]')`)
	b.inert("a user name with markup", "#add-user input[name=name]", "#add-user button", "pwn-user")
	b.do(chromedp.Click(chromedp.CSS(`#users tr[data-user="alice"] a`)))
	b.waitJS("alice's panel", `!!document.querySelector("#user-detail:not([hidden]) h2")`)
	b.shot("users")

	// Invites: one for alice; the page shows its URL and QR code once.
	b.page("invites", `#create-invite select[name=user] option[value="alice"]`)
	b.do(chromedp.Click(chromedp.CSS("#create-invite button")))
	b.waitJS("the invite's QR code", `!!document.querySelector("#invite-url") && !!document.querySelector("#invite-qr svg.qr path")`)
	invite := evalJS[string](b, `document.getElementById("invite-url").textContent`)
	if !strings.HasPrefix(invite, "https://"+l.server.link4.String()+":8443/") || !strings.Contains(invite, "pin-sha256:") {
		t.Fatalf("the page's invite URL: %q", invite)
	}
	b.shot("invites")
	if got := decodeQRPNG(t, b.run(chromedp.Screenshot(chromedp.CSS("#invite-qr svg.qr")))); got != invite {
		t.Errorf("the page's QR code says %q, not the invite URL %q", got, invite)
	}
	// A second invite, withdrawn through the confirmation.
	b.do(chromedp.Click(chromedp.CSS("#create-invite button")))
	b.waitJS("two pending invites", `document.querySelectorAll("#invites tr[data-invite]").length === 2`)
	b.do(chromedp.Click(chromedp.CSS(`#invites tr[data-invite]:last-child button.withdraw`)))
	b.waitJS("the withdraw confirmation", `!!document.querySelector("dialog.confirm[open]")`)
	b.do(chromedp.Click(chromedp.CSS(`dialog.confirm[open] button[data-action="confirm"]`)))
	b.waitJS("one pending invite", `document.querySelectorAll("#invites tr[data-invite]").length === 1`)

	// A real client enrolls with the URL from the page and reaches the lan.
	name := "ap" + l.id
	nsEtc := filepath.Join("/etc/netns", l.client.ns)
	os.MkdirAll(nsEtc, 0o755)
	t.Cleanup(func() { os.RemoveAll(nsEtc) })
	os.WriteFile(filepath.Join(nsEtc, "resolv.conf"), []byte("nameserver 198.18.0.53\n"), 0o644)
	profiles, cstate := filepath.Join(dir, "profiles"), filepath.Join(dir, "client")
	flags := []string{"--profiles", profiles, "--state", cstate}
	mustRun(t, l.client.ns, ptun.bin, "join", invite, "--name", name, "--device", "laptop", "--profiles", profiles)
	t.Cleanup(func() { run(l.client.ns, append([]string{ptun.bin, "down", name}, flags...)...) })
	mustRun(t, l.client.ns, append([]string{ptun.bin, "up", name}, flags...)...)
	mustRun(t, l.client.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", lanHost)

	// Devices: online, and its bytes rise while it pings (the page reads
	// them again by itself).
	laptop := `#devices tr[data-name="alice/laptop"]`
	b.page("devices", laptop+`[data-state="online"]`)
	if got := evalJS[string](b, `document.querySelector('`+laptop+` td.protocol').textContent`); got != "WireGuard" {
		t.Errorf("the laptop's protocol cell: %q, want WireGuard", got)
	}
	rx0 := b.rxOf(laptop)
	pinging := startPing(l.client.ns, lanHost, 12*time.Second)
	b.waitJS("the laptop's bytes to rise on the page", fmt.Sprintf(`Number(document.querySelector('%s td[data-rx]').dataset.rx) > %d`, laptop, rx0))
	b.waitJS("its sparkline", `!!document.querySelector('`+laptop+` svg.spark polyline')`)
	<-pinging
	b.shot("devices")
	// Rename it through the page's dialog.
	b.do(chromedp.Click(chromedp.CSS(laptop + " button.rename")))
	b.waitJS("the rename dialog", `!!document.querySelector("dialog.confirm[open] input[name=answer]")`)
	b.do(chromedp.SetValue(chromedp.CSS("dialog.confirm[open] input[name=answer]"), "work-laptop"),
		chromedp.Click(chromedp.CSS(`dialog.confirm[open] button[data-action="confirm"]`)))
	laptop = `#devices tr[data-name="alice/work-laptop"]`
	b.waitJS("the renamed laptop", `!!document.querySelector('`+laptop+`[data-state="online"]')`)

	// Access rules: eng may reach only the lan host's SSH; the ping that
	// passed is now refused, and counted.
	gw := &node{h: l.server, impl: ptun, ifname: iface}
	acl0 := gw.stats(t)["drop_acl"]
	b.page("rules", "#add-rule")
	// One added and removed again (after the confirmation) first.
	b.do(chromedp.SetValue(chromedp.CSS("#add-rule input[name=group]"), "eng"),
		chromedp.SetValue(chromedp.CSS("#add-rule input[name=rule]"), "198.18.2.53 udp/53"),
		chromedp.Click(chromedp.CSS("#add-rule button")))
	b.waitJS("the first rule", `!!document.querySelector('section[data-group="eng"] li[data-rule-id] button.remove-rule')`)
	b.do(chromedp.Click(chromedp.CSS(`section[data-group="eng"] li[data-rule-id] button.remove-rule`)))
	b.waitJS("the remove confirmation", `!!document.querySelector("dialog.confirm[open]")`)
	b.do(chromedp.Click(chromedp.CSS(`dialog.confirm[open] button[data-action="confirm"]`)))
	b.waitJS("eng without rules", `!document.querySelector('section[data-group="eng"] li[data-rule-id]') && !!document.querySelector('#reach [data-reach="all"]')`)
	b.do(chromedp.SetValue(chromedp.CSS("#add-rule input[name=group]"), "eng"),
		chromedp.SetValue(chromedp.CSS("#add-rule input[name=rule]"), lanHost+" tcp/22"),
		chromedp.Click(chromedp.CSS("#add-rule button")))
	b.waitJS("the rule", `!!document.querySelector('section[data-group="eng"] li[data-rule-id]')`)
	b.waitJS("what alice can reach", `!!document.querySelector('#reach li[data-rule="`+lanHost+` tcp/22"]')`)
	b.do(chromedp.SetValue(chromedp.CSS("#add-rule input[name=group]"), "eng"))
	b.inert("a rule with markup", "#add-rule input[name=rule]", "#add-rule button", "pwn-rule")
	b.shot("rules")
	waitFor(t, 10*time.Second, "the rule to refuse the ping", func() (bool, string) {
		out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", lanHost)
		return err != nil, out
	})
	run(l.client.ns, "ping", "-c", "5", "-i", "0.2", "-W", "1", lanHost) // refused: counted
	b.page("overview", "#stats .stat")
	b.waitJS("drop_acl on the overview", `[...document.querySelectorAll("#drops g.bar")].some((g) => g.dataset.key === "drop_acl" && Number(g.dataset.value) > 0)`)
	b.waitJS("the throughput chart", `!!document.querySelector("#throughput path.series.rx") && !!document.querySelector("#drop-rates path.series")`)
	if online := evalJS[string](b, `document.querySelector('#stats [data-stat="devices_online"] .value').textContent`); online != "1" {
		t.Errorf("the overview says %q devices online, want 1", online)
	}
	shown := int64(evalJS[float64](b, `Number(document.querySelector('#drops g.bar[data-key="drop_acl"]').dataset.value)`))
	if acl := gw.stats(t)["drop_acl"]; shown <= int64(acl0) || uint64(shown) > acl {
		t.Errorf("the overview shows drop_acl %d; ptun show %s had %d before the rule, has %d now", shown, iface, acl0, acl)
	}
	b.shot("overview")

	// Revoke through the page's confirmation: the device's traffic stops.
	mustRun(t, l.client.ns, "ping", "-c", "1", "-W", "2", gatewayTunnel) // allowed whatever the rules
	b.page("devices", laptop)
	b.do(chromedp.Click(chromedp.CSS(laptop + " button.revoke")))
	b.waitJS("the confirmation", `!!document.querySelector("dialog.confirm[open]")`)
	b.shot("revoke")
	b.do(chromedp.Click(chromedp.CSS(`dialog.confirm[open] button[data-action="confirm"]`)))
	b.waitJS("the laptop gone from the active devices", `!document.querySelector('`+laptop+`') && !document.querySelector("dialog.confirm")`)
	waitFor(t, 10*time.Second, "the revoked device's traffic to stop", func() (bool, string) {
		out, err := run(l.client.ns, "ping", "-c", "1", "-W", "1", gatewayTunnel)
		return err != nil, out
	})

	// The audit log has it all, by admin:root; a stored detail with
	// markup is shown as text.
	ctx := context.Background()
	_, reg, err := gateway.Load(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	markup := `<img src=x id=pwn-audit onerror="window.__pwned='audit'"><script>window.__pwned='script'</script><b>bold</b>`
	if err := reg.NoteGatewayChange(registry.WithActor(ctx, "cli:e2e"), "gw1", "gateway.note", markup); err != nil {
		t.Fatal(err)
	}
	reg.Close()
	b.page("audit", `#audit tr[data-action="gateway.note"]`)
	if got := evalJS[string](b, `document.querySelector('#audit tr[data-action="gateway.note"] td.detail').textContent`); got != markup {
		t.Errorf("the audit detail shows %q, want the text %q", got, markup)
	}
	b.noInjection("the audit page", "pwn-audit")
	entries := evalJS[[][]string](b, `[...document.querySelectorAll("#audit tbody tr[data-id]")].map((tr) => [...tr.cells].map((c) => c.textContent))`)
	for _, want := range [][3]string{
		{"admin:root", "admin.login", "root"},
		{"admin:root", "user.add", "alice"},
		{"admin:root", "group.member.add", "eng/alice"},
		{"admin:root", "invite.create", "alice"},
		{"", "device.create", "alice/laptop"},
		{"admin:root", "rule.add", "eng"},
		{"admin:root", "rule.remove", "eng"},
		{"admin:root", "invite.revoke", ""}, // its target is the invite's prefix
		{"admin:root", "device.rename", "alice/work-laptop"},
		{"admin:root", "device.revoke", "alice/work-laptop"},
	} {
		if !slices.ContainsFunc(entries, func(e []string) bool {
			return len(e) == 6 && (want[0] == "" || e[2] == want[0]) && e[3] == want[1] && (want[2] == "" || e[4] == want[2])
		}) {
			t.Errorf("the audit page has no %v; it has:\n%v", want, entries)
		}
	}
	b.shot("audit")
	b.do(chromedp.SetValue(chromedp.CSS("#audit-filter input[name=user]"), "alice"),
		chromedp.Click(chromedp.CSS("#audit-filter button[type=submit]")))
	b.waitJS("the audit filtered by alice", `document.querySelector("#audit tbody").dataset.filter === "?user=alice" && !!document.querySelector('#audit tr[data-action="device.revoke"]')`)
	for _, e := range evalJS[[][]string](b, `[...document.querySelectorAll("#audit tbody tr[data-id]")].map((tr) => [...tr.cells].map((c) => c.textContent))`) {
		if target := e[4]; target != "alice" && !strings.HasPrefix(target, "alice/") && !strings.HasSuffix(target, "/alice") {
			t.Errorf("the audit filtered by alice shows %v", e)
		}
	}

	// CSRF: every state-changing request the page made carried the
	// header; one made from the page without it is refused.
	changes := b.stateChanging()
	for _, r := range changes {
		if !r.csrf && !strings.HasSuffix(r.url, gateway.AdminLoginPath) {
			t.Errorf("%s %s went without %s", r.method, r.url, gateway.CSRFHeader)
		}
	}
	if len(changes) < 8 {
		t.Errorf("only %d state-changing requests seen: %v", len(changes), changes)
	}
	status := evalJS[int](b, `fetch("/api/v1/admin/users", {method: "POST", headers: {"Content-Type": "application/json"},
		body: JSON.stringify({name: "mallory"})}).then((r) => r.status)`, chromedp.EvalAwaitPromise)
	if status != 403 {
		t.Errorf("a POST from the page without the CSRF header: %d, want 403", status)
	}
	if evalJS[bool](b, `fetch("/api/v1/admin/users").then((r) => r.json()).then((us) => us.some((u) => u.name === "mallory"))`, chromedp.EvalAwaitPromise) {
		t.Error("the POST without the CSRF header made its user")
	}
	b.checkProblems()
}

// managementGateway is the gateway's address on the management network
// that addManagement makes; the admin host is .2.
const managementGateway = "198.18.9.1"

// addManagement makes the lab's admin host: a namespace joined to the
// server (the gateway) by its own link, 198.18.9.1/24 on the server's
// mgmt0 and 198.18.9.2/24 on the admin host's. The admin host has no IPv6,
// so that no address appears on it once its link is up (duplicate
// address detection would add one a moment later). It is removed at
// cleanup.
func (l *lab) addManagement(t *testing.T) *host {
	t.Helper()
	adm := &host{lab: l, role: "admin", ns: "ptun-e2e-" + l.id + "-adm"}
	mustRun(t, "", "ip", "netns", "add", adm.ns)
	t.Cleanup(func() { adm.destroy(t) })
	mustRun(t, adm.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	mustRun(t, adm.ns, "ip", "link", "set", "lo", "up")
	mustRun(t, "", "ip", "-n", l.server.ns, "link", "add", "mgmt0", "type", "veth", "peer", "name", "mgmt0", "netns", adm.ns)
	mustRun(t, l.server.ns, "ip", "addr", "add", managementGateway+"/24", "dev", "mgmt0")
	mustRun(t, l.server.ns, "ip", "link", "set", "mgmt0", "up")
	mustRun(t, adm.ns, "ip", "addr", "add", "198.18.9.2/24", "dev", "mgmt0")
	mustRun(t, adm.ns, "ip", "link", "set", "mgmt0", "up")
	mustRun(t, adm.ns, "ping", "-c", "1", "-W", "5", managementGateway)
	return adm
}

// ---------------------------------------------------------------------------
// A Chromium driven over the DevTools protocol.

// browser is a headless Chromium with one tab, started in a namespace.
// Its listener collects what the test checks: console errors, browser
// errors and uncaught exceptions (problems), and every request with the
// bytes it transferred.
type browser struct {
	t     *testing.T
	ctx   context.Context // the tab's; steps run with a timeout derived from it
	shots string          // the screenshots' folder
	nshot int

	mu       sync.Mutex
	problems []string
	reqs     map[network.RequestID]*pageRequest
	order    []network.RequestID
}

// pageRequest is one request the page made.
type pageRequest struct {
	method, url string
	csrf        bool    // it carried a non-empty X-CSRF-Token
	bytes       float64 // transferred, headers included, once finished
	finished    bool
	failed      string // why it failed, if it did
}

func (r *pageRequest) String() string { return r.method + " " + r.url }

// stepTimeout bounds one browser step.
const stepTimeout = 20 * time.Second

// startBrowser runs chromium headless in namespace ns with a profile of
// its own (removed at cleanup, with every process of it), accepting the
// certificate whose public key's SHA-256 is spki (base64) whatever its
// name or issuer.
func startBrowser(t *testing.T, chromium, ns, spki string) *browser {
	t.Helper()
	profile, err := os.MkdirTemp("", "ptun-e2e-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{t: t, shots: artifactsDir(t), reqs: map[network.RequestID]*pageRequest{}}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.UserDataDir(profile), chromedp.NoSandbox, chromedp.WindowSize(1280, 900),
		chromedp.Flag("ignore-certificate-errors-spki-list", spki),
		// Over the DevTools pipe (fds 3 and 4), which ip netns exec passes on.
		chromedp.ModifyCmdFunc(func(cmd *exec.Cmd) {
			cmd.Args = append([]string{"ip", "netns", "exec", ns}, cmd.Args...)
			cmd.Path = ip
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		}))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithListener(b.event))
	b.ctx = ctx
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		// Helpers (the crashpad handler) may outlive the browser a moment.
		var pids []int
		out, _ := run("", "pgrep", "-f", "--", "--user-data-dir="+profile)
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		killPIDs(pids)
		for i := 0; ; i++ {
			if err := os.RemoveAll(profile); err == nil || i == 50 {
				if err != nil {
					t.Errorf("removing Chromium's profile: %v", err)
				}
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if t.Failed() {
			b.checkProblems()
		}
	})
	// The first step starts the browser; it must not have a deadline (the
	// browser would live only as long), so it is bounded here.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx, chromedp.Navigate("about:blank")) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("starting %s: %v", chromium, err)
		}
	case <-time.After(60 * time.Second):
		cancelTab()
		t.Fatalf("%s did not start within 60 s", chromium)
	}
	return b
}

// artifactsDir is a folder for the test's screenshots that outlives it:
// $PTUN_TEST_ARTIFACTS/TEST if set, else a new one in the temporary folder.
func artifactsDir(t *testing.T) string {
	t.Helper()
	var dir string
	var err error
	if root := os.Getenv("PTUN_TEST_ARTIFACTS"); root != "" {
		dir = filepath.Join(root, t.Name())
		err = os.MkdirAll(dir, 0o755)
	} else {
		dir, err = os.MkdirTemp("", "ptun-"+t.Name()+"-")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// event is the tab's listener: it must return at once and run no command.
func (b *browser) event(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var parts []string
			for _, a := range ev.Args {
				if a.Description != "" {
					parts = append(parts, a.Description)
				} else {
					parts = append(parts, string(a.Value))
				}
			}
			b.problems = append(b.problems, "console."+string(ev.Type)+": "+strings.Join(parts, " "))
		}
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg := d.Text
		if d.Exception != nil {
			msg += " " + d.Exception.Description
		}
		b.problems = append(b.problems, fmt.Sprintf("uncaught exception at %s:%d: %s", d.URL, d.LineNumber+1, msg))
	case *log.EventEntryAdded:
		// The refusals the test provokes (401 before login, 400, 403) are
		// network entries; anything else at level error (a CSP or Trusted
		// Types violation, a script that failed to load) is a problem.
		if e := ev.Entry; e.Level == log.EntryLevelError && e.Source != log.EntrySourceNetwork {
			b.problems = append(b.problems, fmt.Sprintf("browser %s error: %s (%s)", e.Source, e.Text, e.URL))
		}
	case *network.EventRequestWillBeSent:
		r := &pageRequest{method: ev.Request.Method, url: ev.Request.URL}
		for k, v := range ev.Request.Headers {
			if strings.EqualFold(k, gateway.CSRFHeader) {
				s, _ := v.(string)
				r.csrf = s != ""
			}
		}
		if _, seen := b.reqs[ev.RequestID]; !seen {
			b.order = append(b.order, ev.RequestID)
		}
		b.reqs[ev.RequestID] = r // a redirect reuses the id: the last one counts
	case *network.EventLoadingFinished:
		if r := b.reqs[ev.RequestID]; r != nil {
			r.bytes, r.finished = ev.EncodedDataLength, true
		}
	case *network.EventLoadingFailed:
		if r := b.reqs[ev.RequestID]; r != nil {
			r.finished, r.failed = true, ev.ErrorText
			if ev.Canceled {
				r.failed += " (canceled)"
			}
		}
	}
}

// settledBytes waits (up to 5 s) until every request so far has finished
// and returns the bytes they transferred and their number.
func (b *browser) settledBytes() (int, int) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		sum, open := 0.0, 0
		for _, r := range b.reqs {
			sum += r.bytes
			if !r.finished {
				open++
			}
		}
		n := len(b.reqs)
		b.mu.Unlock()
		if open == 0 || time.Now().After(deadline) {
			return int(sum), n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stateChanging is the requests to the admin API with a method that may
// change something, in order.
func (b *browser) stateChanging() []*pageRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*pageRequest
	for _, id := range b.order {
		r := b.reqs[id]
		if strings.Contains(r.url, gateway.AdminPrefix+"/") && r.method != "GET" && r.method != "HEAD" && r.method != "OPTIONS" {
			out = append(out, r)
		}
	}
	return out
}

// checkProblems fails the test for each problem seen so far (once).
func (b *browser) checkProblems() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.problems {
		b.t.Errorf("in the browser: %s", p)
	}
	b.problems = nil
}

// run1 runs one action with a timeout and returns its value.
func run1[T any](b *browser, a chromedp.Action[T]) (T, error) {
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	return chromedp.Run(ctx, a)
}

func (b *browser) run(a chromedp.Action[[]byte]) []byte {
	b.t.Helper()
	v, err := run1(b, a)
	if err != nil {
		b.fatal("%v", err)
	}
	return v
}

// do runs steps in order, failing the test at the first error.
func (b *browser) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.fatal("%v", err)
	}
}

// fatal fails the test with a screenshot of the page as it was, and the
// requests that failed.
func (b *browser) fatal(format string, args ...any) {
	b.t.Helper()
	b.shotQuiet("failure")
	b.checkProblems()
	b.mu.Lock()
	for _, id := range b.order {
		if r := b.reqs[id]; r.failed != "" {
			b.t.Logf("failed request: %v: %s", r, r.failed)
		}
	}
	b.mu.Unlock()
	b.t.Fatalf(format, args...)
}

// evalJS evaluates expr in the page and decodes its value as T.
func evalJS[T any](b *browser, expr string, opts ...chromedp.EvaluateOption) T {
	b.t.Helper()
	v, err := run1(b, chromedp.Evaluate[T](expr, opts...))
	if err != nil {
		b.fatal("evaluating %s: %v", expr, err)
	}
	return v
}

// waitJS polls expr (a boolean expression) until it holds, for up to 15 s
// (three of the page's refreshes).
func (b *browser) waitJS(what, expr string) {
	b.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, err := run1(b, chromedp.Evaluate[bool]("!!("+expr+")"))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			view, _ := run1(b, chromedp.Evaluate[string](`document.getElementById("view") ? document.getElementById("view").innerText.slice(0, 2000) : document.body.innerText`))
			b.fatal("timed out waiting for %s (%s; %v); the page shows:\n%s", what, expr, err, view)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// page goes to a page by its link in the navigation and waits until it
// shows sel.
func (b *browser) page(name, sel string) {
	b.t.Helper()
	b.do(chromedp.Click(chromedp.CSS(`#nav a[data-page="` + name + `"]`)))
	b.waitJS("the "+name+" page", fmt.Sprintf(`document.getElementById("view").dataset.page === %q && !!document.querySelector(%q)`, name, sel))
}

// shot saves a screenshot of the whole page as NN-name.png.
func (b *browser) shot(name string) {
	b.t.Helper()
	if err := b.shotQuiet(name); err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
}

func (b *browser) shotQuiet(name string) error {
	img, err := run1(b, chromedp.FullScreenshot(100))
	if err != nil {
		return err
	}
	b.nshot++
	return os.WriteFile(filepath.Join(b.shots, fmt.Sprintf("%02d-%s.png", b.nshot, name)), img, 0o644)
}

// rxOf is the received bytes the devices page shows in row sel.
func (b *browser) rxOf(sel string) int64 {
	b.t.Helper()
	return int64(evalJS[float64](b, `Number(document.querySelector('`+sel+` td[data-rx]').dataset.rx)`))
}

// inert types a value with markup (making an element of id id if it were
// parsed) into input, submits with button, and checks that the page shows
// the refusal as text and made no element of it.
func (b *browser) inert(what, input, button, id string) {
	b.t.Helper()
	markup := `<img src=x id=` + id + ` onerror=__pwned=1><b>x</b>` // a name's 64 bytes at most
	b.do(chromedp.SetValue(chromedp.CSS(input), markup), chromedp.Click(chromedp.CSS(button)))
	b.waitJS("the refusal of "+what, `!!document.querySelector("#view .message.error") && document.querySelector("#view .message.error").textContent.includes("<img src=x id=`+id+`")`)
	b.noInjection(what, id)
}

// noInjection checks that no element of id id exists and no handler of
// injected markup ran.
func (b *browser) noInjection(what, id string) {
	b.t.Helper()
	if evalJS[bool](b, `!!document.getElementById("`+id+`") || window.__pwned !== undefined || document.querySelectorAll("#view b").length > 0`) {
		b.t.Errorf("%s: markup became elements in the page", what)
	}
}

// startPing pings dst from ns every 0.2 s for d; the channel closes when
// it is done.
func startPing(ns, dst string, d time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(ns, "ping", "-q", "-i", "0.2", "-W", "1", "-w", strconv.Itoa(int(d.Seconds())), dst)
	}()
	return done
}

// decodeQRPNG reads the QR code in a PNG screenshot with gozxing (written
// apart from the encoder the gateway uses).
func decodeQRPNG(t *testing.T, b []byte) string {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, hints := range []map[gozxing.DecodeHintType]any{
		{gozxing.DecodeHintType_PURE_BARCODE: true},
		{gozxing.DecodeHintType_TRY_HARDER: true},
	} {
		if res, err := qrcode.NewQRCodeReader().Decode(bmp, hints); err == nil {
			return res.GetText()
		}
	}
	os.WriteFile(filepath.Join(os.TempDir(), "ptun-adminpage-qr.png"), b, 0o644)
	t.Fatalf("the page's QR code (%v) does not decode", img.Bounds().Size())
	return ""
}
