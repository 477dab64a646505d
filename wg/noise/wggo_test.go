package noise_test

// Cross-checks against wireguard-go, a WireGuard implementation no one here
// wrote: handshakes in both directions with a PSK through its exported
// handshake functions, MACs and cookies checked by its CookieChecker and
// CookieGenerator, and session keys proven by exchanging transport packets
// through a running wireguard-go device (fake TUN and bind, no network).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wg/wire"
)

var (
	wgAddr   = netip.MustParseAddr("100.64.0.1") // the wireguard-go side's tunnel address
	ptunAddr = netip.MustParseAddr("100.64.0.2") // ours
)

const ioTimeout = 5 * time.Second

// wgPeer is a running wireguard-go device with one peer: us.
type wgPeer struct {
	dev  *device.Device
	tun  *tuntest.ChannelTUN
	peer *device.Peer
	priv noise.PrivateKey
	pub  noise.PublicKey

	ours conn.Bind   // our end of the fake link
	rx   chan []byte // datagrams the device sent us
}

// devSide is where datagrams we send through ours arrive: the device's bind
// (see bindtest.NewChannelBinds: the second bind's IPv4 target is port 2).
var devSide = bindtest.ChannelEndpoint(2)

func startWireGuardGo(t *testing.T, ourPub noise.PublicKey, psk noise.PresharedKey) *wgPeer {
	t.Helper()
	priv, err := noise.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	w := &wgPeer{tun: tuntest.NewChannelTUN(), priv: priv, pub: priv.PublicKey(), rx: make(chan []byte, 64)}
	binds := bindtest.NewChannelBinds()
	w.ours = binds[1]
	w.dev = device.NewDevice(w.tun.TUN(), binds[0], device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(w.dev.Close)
	// Our keys are given in UAPI hex; the endpoint port 1 is our bind.
	cfg := fmt.Sprintf("private_key=%s\npublic_key=%s\npreshared_key=%s\nendpoint=127.0.0.1:1\nallowed_ip=%s/32\n",
		priv.Hex(), ourPub.Hex(), psk.Hex(), ptunAddr)
	if err := w.dev.IpcSet(cfg); err != nil {
		t.Fatal(err)
	}
	if err := w.dev.Up(); err != nil {
		t.Fatal(err)
	}
	w.peer = w.dev.LookupPeer(device.NoisePublicKey(ourPub))
	if w.peer == nil {
		t.Fatal("wireguard-go lost the peer")
	}

	fns, _, err := w.ours.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	for _, fn := range fns {
		go func() {
			bufs, sizes, eps := [][]byte{make([]byte, 65535)}, []int{0}, []conn.Endpoint{nil}
			for {
				n, err := fn(bufs, sizes, eps)
				if err != nil {
					return
				}
				for i := range n {
					select {
					case w.rx <- bytes.Clone(bufs[i][:sizes[i]]):
					case <-done:
						return
					}
				}
			}
		}()
	}
	t.Cleanup(func() { close(done); w.ours.Close() })
	return w
}

// send delivers a datagram to the device.
func (w *wgPeer) send(t *testing.T, b []byte) {
	t.Helper()
	if err := w.ours.Send([][]byte{b}, devSide); err != nil {
		t.Fatal(err)
	}
}

// recv waits for the next datagram of type typ from the device, skipping
// others (keepalives, retransmissions) up to a bound.
func (w *wgPeer) recv(t *testing.T, typ uint32) []byte {
	t.Helper()
	deadline := time.After(ioTimeout)
	for range 32 {
		select {
		case b := <-w.rx:
			if got, err := wire.MessageType(b); err == nil && got == typ {
				return b
			}
		case <-deadline:
			t.Fatalf("no message of type %d from wireguard-go within %v", typ, ioTimeout)
		}
	}
	t.Fatalf("no message of type %d among 32 from wireguard-go", typ)
	return nil
}

func toWire(t *testing.T, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func fromWire(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := binary.Read(bytes.NewReader(b), binary.LittleEndian, v); err != nil {
		t.Fatal(err)
	}
}

func transportNonce(counter uint64) []byte {
	var n [chacha20poly1305.NonceSize]byte
	binary.LittleEndian.PutUint64(n[4:], counter)
	return n[:]
}

// sealTransport builds a transport data message the way the whitepaper
// (section 5.4.6) describes it.
func sealTransport(t *testing.T, key [32]byte, receiver uint32, counter uint64, plain []byte) []byte {
	t.Helper()
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, wire.TransportHeaderSize, wire.TransportHeaderSize+len(plain)+wire.TagSize)
	wire.PutTransportHeader(out, receiver, counter)
	return aead.Seal(out, transportNonce(counter), plain, nil)
}

func openTransport(t *testing.T, key [32]byte, wantReceiver uint32, msg []byte) []byte {
	t.Helper()
	receiver, counter, err := wire.ParseTransportHeader(msg)
	if err != nil {
		t.Fatal(err)
	}
	if receiver != wantReceiver {
		t.Fatalf("transport receiver %d, want %d", receiver, wantReceiver)
	}
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		t.Fatal(err)
	}
	plain, err := aead.Open(nil, transportNonce(counter), msg[wire.TransportHeaderSize:], nil)
	if err != nil {
		t.Fatalf("cannot decrypt wireguard-go's transport packet with our receive key: %v", err)
	}
	return plain
}

// sendData proves keys.Send (and keys.RemoteIndex) to wireguard-go: it
// decrypts our packet and delivers it to its TUN.
func (w *wgPeer) sendData(t *testing.T, keys noise.Keys, counter uint64) {
	t.Helper()
	ping := tuntest.Ping(wgAddr, ptunAddr)
	w.send(t, sealTransport(t, keys.Send, keys.RemoteIndex, counter, ping))
	select {
	case got := <-w.tun.Inbound:
		if !bytes.Equal(got, ping) {
			t.Fatalf("wireguard-go delivered %x, want %x", got, ping)
		}
	case <-time.After(ioTimeout):
		t.Fatal("wireguard-go did not accept our transport packet")
	}
}

// recvData proves keys.Receive (and keys.LocalIndex): a packet wireguard-go
// encrypts decrypts with them.
func (w *wgPeer) recvData(t *testing.T, keys noise.Keys) {
	t.Helper()
	ping := tuntest.Ping(ptunAddr, wgAddr)
	select {
	case w.tun.Outbound <- ping:
	case <-time.After(ioTimeout):
		t.Fatal("wireguard-go does not read its TUN")
	}
	plain := openTransport(t, keys.Receive, keys.LocalIndex, w.recv(t, wire.TypeTransport))
	if len(plain) < len(ping) || !bytes.Equal(plain[:len(ping)], ping) {
		t.Fatalf("decrypted %x, want %x (+padding)", plain, ping)
	}
}

func newIdentity(t *testing.T) (*noise.Local, noise.PresharedKey) {
	t.Helper()
	priv, err := noise.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	psk, err := noise.GeneratePresharedKey()
	if err != nil {
		t.Fatal(err)
	}
	return noise.NewLocal(priv), psk
}

func wgCookieChecker(pub noise.PublicKey) *device.CookieChecker {
	var c device.CookieChecker
	c.Init(device.NoisePublicKey(pub))
	return &c
}

func wgCookieGenerator(pub noise.PublicKey) *device.CookieGenerator {
	var g device.CookieGenerator
	g.Init(device.NoisePublicKey(pub))
	return &g
}

// TestWireGuardGoInitiates: wireguard-go initiates through its exported
// handshake API, we respond.
func TestWireGuardGoInitiates(t *testing.T) {
	local, psk := newIdentity(t)
	w := startWireGuardGo(t, local.Public, psk)

	wgInit, err := w.dev.CreateMessageInitiation(w.peer)
	if err != nil {
		t.Fatal(err)
	}
	initBytes := toWire(t, wgInit)
	wgCookieGenerator(local.Public).AddMacs(initBytes)
	if !noise.NewCookieChecker(local.Public).CheckMAC1(initBytes) {
		t.Fatal("our CheckMAC1 rejects wireguard-go's mac1")
	}

	var m wire.Initiation
	if err := m.Unmarshal(initBytes); err != nil {
		t.Fatal(err)
	}
	info, err := noise.ConsumeInitiation(local, &m)
	if err != nil {
		t.Fatalf("ConsumeInitiation of wireguard-go's initiation: %v", err)
	}
	if info.RemoteStatic != w.pub || info.RemoteIndex != wgInit.Sender {
		t.Fatalf("info = %v/%d, want %v/%d", info.RemoteStatic, info.RemoteIndex, w.pub, wgInit.Sender)
	}
	if old := noise.TimestampOf(time.Now().Add(-time.Minute)); !info.Timestamp.After(old) || noise.TimestampOf(time.Now().Add(time.Minute)).After(info.Timestamp) == false {
		t.Fatalf("timestamp %x is not within a minute of now", info.Timestamp)
	}

	const ourIndex = 0x5eed0001
	resp, keys, err := noise.CreateResponse(local, info, psk, ourIndex)
	if err != nil {
		t.Fatal(err)
	}
	respBytes := make([]byte, wire.ResponseSize)
	resp.Marshal(respBytes)
	noise.NewCookieGenerator(w.pub).AddMACs(respBytes)
	if !wgCookieChecker(w.pub).CheckMAC1(respBytes) {
		t.Fatal("wireguard-go's CheckMAC1 rejects our mac1")
	}
	var wgResp device.MessageResponse
	fromWire(t, respBytes, &wgResp)
	if w.dev.ConsumeMessageResponse(&wgResp) != w.peer {
		t.Fatal("wireguard-go rejected our response")
	}
	if err := w.peer.BeginSymmetricSession(); err != nil {
		t.Fatal(err)
	}
	if keys.Initiator || keys.LocalIndex != ourIndex || keys.RemoteIndex != wgInit.Sender {
		t.Fatalf("keys metadata %+v", keys)
	}
	// wireguard-go is the initiator: its session is current, it may send first.
	w.recvData(t, keys)
	w.sendData(t, keys, 0)
	w.sendData(t, keys, 1)
}

// TestWireGuardGoResponds: we initiate, wireguard-go responds through its
// exported handshake API.
func TestWireGuardGoResponds(t *testing.T) {
	local, psk := newIdentity(t)
	w := startWireGuardGo(t, local.Public, psk)

	const ourIndex = 0x5eed0002
	msg, st, err := noise.CreateInitiation(local, w.pub, ourIndex, noise.Now())
	if err != nil {
		t.Fatal(err)
	}
	initBytes := make([]byte, wire.InitiationSize)
	msg.Marshal(initBytes)
	noise.NewCookieGenerator(w.pub).AddMACs(initBytes)
	if !wgCookieChecker(w.pub).CheckMAC1(initBytes) {
		t.Fatal("wireguard-go's CheckMAC1 rejects our mac1")
	}
	var wgInit device.MessageInitiation
	fromWire(t, initBytes, &wgInit)
	if w.dev.ConsumeMessageInitiation(&wgInit) != w.peer {
		t.Fatal("wireguard-go rejected our initiation")
	}
	wgResp, err := w.dev.CreateMessageResponse(w.peer)
	if err != nil {
		t.Fatal(err)
	}
	respBytes := toWire(t, wgResp)
	wgCookieGenerator(local.Public).AddMacs(respBytes)
	if !noise.NewCookieChecker(local.Public).CheckMAC1(respBytes) {
		t.Fatal("our CheckMAC1 rejects wireguard-go's mac1")
	}
	var m wire.Response
	if err := m.Unmarshal(respBytes); err != nil {
		t.Fatal(err)
	}
	keys, err := st.ConsumeResponse(local, psk, &m)
	if err != nil {
		t.Fatalf("ConsumeResponse of wireguard-go's response: %v", err)
	}
	if err := w.peer.BeginSymmetricSession(); err != nil {
		t.Fatal(err)
	}
	if !keys.Initiator || keys.LocalIndex != ourIndex || keys.RemoteIndex != wgResp.Sender {
		t.Fatalf("keys metadata %+v", keys)
	}
	// wireguard-go is the responder: its session starts as "next" and is
	// confirmed by our first packet, so we send first.
	w.sendData(t, keys, 0)
	w.recvData(t, keys)
	w.sendData(t, keys, 1)
}

// TestWireGuardGoWrongPSK: a PSK mismatch fails on both sides.
func TestWireGuardGoWrongPSK(t *testing.T) {
	local, psk := newIdentity(t)
	w := startWireGuardGo(t, local.Public, psk)
	other, _ := noise.GeneratePresharedKey()

	// We initiate, wireguard-go responds with its PSK, we use another.
	msg, st, err := noise.CreateInitiation(local, w.pub, 1, noise.Now())
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, wire.InitiationSize)
	msg.Marshal(b)
	var wgInit device.MessageInitiation
	fromWire(t, b, &wgInit)
	if w.dev.ConsumeMessageInitiation(&wgInit) == nil {
		t.Fatal("wireguard-go rejected our initiation")
	}
	wgResp, err := w.dev.CreateMessageResponse(w.peer)
	if err != nil {
		t.Fatal(err)
	}
	var m wire.Response
	if err := m.Unmarshal(toWire(t, wgResp)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ConsumeResponse(local, other, &m); !errors.Is(err, noise.ErrAuthFailed) {
		t.Fatalf("wrong PSK: %v", err)
	}
	// The state survives a failed response; the right PSK still works.
	if _, err := st.ConsumeResponse(local, psk, &m); err != nil {
		t.Fatalf("right PSK after a failure: %v", err)
	}

	// wireguard-go initiates, we answer with the wrong PSK.
	wgInit2, err := w.dev.CreateMessageInitiation(w.peer)
	if err != nil {
		t.Fatal(err)
	}
	var mi wire.Initiation
	if err := mi.Unmarshal(toWire(t, wgInit2)); err != nil {
		t.Fatal(err)
	}
	info, err := noise.ConsumeInitiation(local, &mi)
	if err != nil {
		t.Fatal(err)
	}
	resp, _, err := noise.CreateResponse(local, info, other, 2)
	if err != nil {
		t.Fatal(err)
	}
	rb := make([]byte, wire.ResponseSize)
	resp.Marshal(rb)
	var wr device.MessageResponse
	fromWire(t, rb, &wr)
	if w.dev.ConsumeMessageResponse(&wr) != nil {
		t.Fatal("wireguard-go accepted a response made with the wrong PSK")
	}
}

// TestWireGuardGoCookies: cookie replies and mac2 interoperate both ways.
func TestWireGuardGoCookies(t *testing.T) {
	local, _ := newIdentity(t)
	wgPriv, _ := noise.GeneratePrivateKey()
	wgPub := wgPriv.PublicKey()
	src := netip.MustParseAddrPort("198.18.0.7:51820")
	srcBytes, _ := src.MarshalBinary() // wireguard-go's own form of an endpoint

	// Their checker under load, our generator: initiation -> cookie reply
	// -> initiation with mac2.
	ourGen := noise.NewCookieGenerator(wgPub)
	wgChk := wgCookieChecker(wgPub)
	msg, _, err := noise.CreateInitiation(local, wgPub, 7, noise.Now())
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, wire.InitiationSize)
	msg.Marshal(b)
	ourGen.AddMACs(b)
	if !wgChk.CheckMAC1(b) || wgChk.CheckMAC2(b, srcBytes) {
		t.Fatal("wireguard-go: want mac1 valid, mac2 not yet")
	}
	wgReply, err := wgChk.CreateReply(b, 7, srcBytes)
	if err != nil {
		t.Fatal(err)
	}
	var reply wire.CookieReply
	if err := reply.Unmarshal(toWire(t, wgReply)); err != nil {
		t.Fatal(err)
	}
	if err := ourGen.ConsumeReply(&reply); err != nil {
		t.Fatalf("our generator rejects wireguard-go's cookie reply: %v", err)
	}
	ourGen.AddMACs(b)
	if !wgChk.CheckMAC1(b) || !wgChk.CheckMAC2(b, srcBytes) {
		t.Fatal("wireguard-go rejects our mac2")
	}
	otherSrc, _ := netip.MustParseAddrPort("198.18.0.8:51820").MarshalBinary()
	if wgChk.CheckMAC2(b, otherSrc) {
		t.Fatal("wireguard-go accepts our mac2 from another address")
	}

	// Our checker under load, their generator, on a response.
	ourChk := noise.NewCookieChecker(local.Public)
	wgGen := wgCookieGenerator(local.Public)
	rb := make([]byte, wire.ResponseSize)
	(&wire.Response{Sender: 99, Receiver: 7}).Marshal(rb)
	wgGen.AddMacs(rb)
	if !ourChk.CheckMAC1(rb) || ourChk.CheckMAC2(rb, src) {
		t.Fatal("ours: want mac1 valid, mac2 not yet")
	}
	ourReply, err := ourChk.CreateReply(rb, src)
	if err != nil {
		t.Fatal(err)
	}
	if ourReply.Receiver != 99 {
		t.Fatalf("reply receiver %d, want the response's sender 99", ourReply.Receiver)
	}
	cb := make([]byte, wire.CookieReplySize)
	ourReply.Marshal(cb)
	var wgReply2 device.MessageCookieReply
	fromWire(t, cb, &wgReply2)
	if !wgGen.ConsumeReply(&wgReply2) {
		t.Fatal("wireguard-go rejects our cookie reply")
	}
	wgGen.AddMacs(rb)
	if !ourChk.CheckMAC1(rb) || !ourChk.CheckMAC2(rb, src) {
		t.Fatal("our CheckMAC2 rejects wireguard-go's mac2")
	}
	if ourChk.CheckMAC2(rb, netip.MustParseAddrPort("198.18.0.7:51821")) {
		t.Fatal("our CheckMAC2 accepts a mac2 from another port")
	}
}

// TestWireGuardGoDevicePath runs whole handshakes through a running
// wireguard-go device's receive path, which checks our mac1 itself and
// answers with MACs of its own, in both directions.
func TestWireGuardGoDevicePath(t *testing.T) {
	t.Run("we-initiate", func(t *testing.T) {
		local, psk := newIdentity(t)
		w := startWireGuardGo(t, local.Public, psk)
		gen, chk := noise.NewCookieGenerator(w.pub), noise.NewCookieChecker(local.Public)

		const ourIndex = 0x5eed0003
		msg, st, err := noise.CreateInitiation(local, w.pub, ourIndex, noise.Now())
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, wire.InitiationSize)
		msg.Marshal(b)
		gen.AddMACs(b)
		w.send(t, b)

		rb := w.recv(t, wire.TypeResponse)
		if !chk.CheckMAC1(rb) {
			t.Fatal("mac1 of wireguard-go's response does not verify")
		}
		var m wire.Response
		if err := m.Unmarshal(rb); err != nil {
			t.Fatal(err)
		}
		keys, err := st.ConsumeResponse(local, psk, &m)
		if err != nil {
			t.Fatal(err)
		}
		w.sendData(t, keys, 0)
		w.recvData(t, keys)
	})

	t.Run("wireguard-go-initiates", func(t *testing.T) {
		local, psk := newIdentity(t)
		w := startWireGuardGo(t, local.Public, psk)
		gen, chk := noise.NewCookieGenerator(w.pub), noise.NewCookieChecker(local.Public)

		// A packet for us makes wireguard-go start a handshake.
		ping := tuntest.Ping(ptunAddr, wgAddr)
		select {
		case w.tun.Outbound <- ping:
		case <-time.After(ioTimeout):
			t.Fatal("wireguard-go does not read its TUN")
		}
		ib := w.recv(t, wire.TypeInitiation)
		if !chk.CheckMAC1(ib) {
			t.Fatal("mac1 of wireguard-go's initiation does not verify")
		}
		var mi wire.Initiation
		if err := mi.Unmarshal(ib); err != nil {
			t.Fatal(err)
		}
		info, err := noise.ConsumeInitiation(local, &mi)
		if err != nil {
			t.Fatal(err)
		}
		const ourIndex = 0x5eed0004
		resp, keys, err := noise.CreateResponse(local, info, psk, ourIndex)
		if err != nil {
			t.Fatal(err)
		}
		rb := make([]byte, wire.ResponseSize)
		resp.Marshal(rb)
		gen.AddMACs(rb)
		w.send(t, rb)

		// The staged packet follows, encrypted with the new session.
		for range 8 {
			plain := openTransport(t, keys.Receive, keys.LocalIndex, w.recv(t, wire.TypeTransport))
			if len(plain) == 0 {
				continue // a keepalive
			}
			if len(plain) < len(ping) || !bytes.Equal(plain[:len(ping)], ping) {
				t.Fatalf("decrypted %x, want %x", plain, ping)
			}
			w.sendData(t, keys, 0)
			return
		}
		t.Fatal("only keepalives from wireguard-go")
	})
}
