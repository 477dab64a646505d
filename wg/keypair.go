package wg

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/ptun-vpn/ptun/wg/noise"
	"github.com/ptun-vpn/ptun/wg/replay"
)

// keypair is one session: the two AEADs a completed handshake produced.
type keypair struct {
	send, recv  cipher.AEAD
	sendCounter atomic.Uint64 // next counter to use; may pass rejectAfterMessages (then the session is spent)
	created     time.Time
	localIndex  uint32
	remoteIndex uint32
	initiator   bool
	peer        *Peer

	replayMu sync.Mutex // guards replay; taken once per received packet, uncontended but for roaming across families
	replay   replay.Filter
}

func newKeypair(p *Peer, k noise.Keys, now time.Time) (*keypair, error) {
	send, err := chacha20poly1305.New(k.Send[:])
	if err != nil {
		return nil, err
	}
	recv, err := chacha20poly1305.New(k.Receive[:])
	if err != nil {
		return nil, err
	}
	return &keypair{
		send: send, recv: recv, created: now,
		localIndex: k.LocalIndex, remoteIndex: k.RemoteIndex,
		initiator: k.Initiator, peer: p,
	}, nil
}

// nonce writes the 96-bit AEAD nonce for counter into n (len 12).
func nonce(n []byte, counter uint64) {
	n[0], n[1], n[2], n[3] = 0, 0, 0, 0
	binary.LittleEndian.PutUint64(n[4:], counter)
}

// keypairs holds a peer's sessions. current sends; next is a responder's
// session that becomes current when the initiator first uses it; previous
// still receives packets that were in flight when current replaced it.
// Lock order: keypairs, then the peer's handshake lock, then the index
// table (installSession takes all three).
type keypairs struct {
	sync.Mutex // guards previous and next, and writes of current
	previous   *keypair
	current    atomic.Pointer[keypair] // read lock-free on the send path
	next       *keypair
}

// indexEntry is what a receiver index designates: a session, or (kp nil) a
// handshake this side initiated and awaits the response of.
type indexEntry struct {
	peer *Peer
	kp   *keypair
}

// indexTable maps the 32-bit indices we hand out to sessions and handshakes.
type indexTable struct {
	sync.RWMutex // guards m
	m            map[uint32]indexEntry
}

func (t *indexTable) lookup(i uint32) indexEntry {
	t.RLock()
	e := t.m[i]
	t.RUnlock()
	return e
}

// newIndex reserves a fresh random index for p's pending handshake.
func (t *indexTable) newIndex(p *Peer) uint32 {
	var b [4]byte
	t.Lock()
	defer t.Unlock()
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic("crypto/rand failed: " + err.Error())
		}
		i := binary.LittleEndian.Uint32(b[:])
		if _, used := t.m[i]; !used {
			t.m[i] = indexEntry{peer: p}
			return i
		}
	}
}

// set points an index we already reserved at a session.
func (t *indexTable) set(i uint32, e indexEntry) {
	t.Lock()
	t.m[i] = e
	t.Unlock()
}

func (t *indexTable) remove(i uint32) {
	t.Lock()
	delete(t.m, i)
	t.Unlock()
}

// removeHandshake removes i only if it still belongs to p's handshake (not to a
// session).
func (t *indexTable) removeHandshake(i uint32, p *Peer) {
	t.Lock()
	if e, ok := t.m[i]; ok && e.peer == p && e.kp == nil {
		delete(t.m, i)
	}
	t.Unlock()
}
