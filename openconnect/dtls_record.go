package openconnect

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/pion/dtls/v3"
	"golang.org/x/crypto/chacha20poly1305"
)

// ptun's own DTLS 1.2 record layer, for the data path once pion/dtls has
// done the handshake (RFC 6347 §4.1 records, RFC 5246 §6.3 keys, RFC
// 5288 AES-GCM, RFC 7905 ChaCha20-Poly1305). pion gives the master
// secret, both randoms, the suite and its epoch-1 sequence numbers in the
// snapshot State.MarshalBinary makes; the keys are derived from them here
// again, and records are sealed and opened in place in the caller's
// buffers, with no allocation.
//
// A record: type (1), version (2), epoch (2), sequence number (6), length
// (2), then the fragment. AES-128-GCM's fragment is an 8-byte explicit
// nonce (ptun writes the epoch and sequence number there), the ciphertext
// and a 16-byte tag, its nonce the 4-byte implicit IV and the explicit
// one; ChaCha20-Poly1305's is the ciphertext and tag, its nonce the
// 12-byte IV XOR the epoch and sequence number. The additional data of
// both is epoch, sequence number, type, version and the plaintext length.

const (
	recordHeaderLen = 13
	recordTagLen    = 16
	gcmExplicitLen  = 8

	// maxRecordSeq is the largest sequence number (48 bits).
	maxRecordSeq = 1<<48 - 1

	// Content types.
	recordChangeCipherSpec = 20
	recordAlert            = 21
	recordHandshake        = 22
	recordApplicationData  = 23

	// maxRecordOverhead is what sealing adds to a plaintext at most.
	maxRecordOverhead = recordHeaderLen + gcmExplicitLen + recordTagLen
)

// dtls12Version is DTLS 1.2 on the wire.
var dtls12Version = [2]byte{0xfe, 0xfd}

// Record errors: the record is dropped (and counted), nothing else.
var (
	errRecordMalformed = errors.New("openconnect: malformed DTLS record")
	errRecordEpoch     = errors.New("openconnect: DTLS record of another epoch")
	errRecordMAC       = errors.New("openconnect: DTLS record failed authentication")
	errRecordSeqLimit  = errors.New("openconnect: DTLS sequence numbers exhausted")
)

// recordCipher is one direction's key.
type recordCipher struct {
	aead     cipher.AEAD
	iv       [12]byte // GCM: only the first 4 bytes, the salt
	explicit bool     // GCM: an explicit nonce in each record
}

func (c *recordCipher) nonce(n *[12]byte, epochSeq uint64) {
	if c.explicit {
		copy(n[:4], c.iv[:4])
		binary.BigEndian.PutUint64(n[4:], epochSeq)
		return
	}
	*n = c.iv
	for i := range 8 {
		n[4+i] ^= byte(epochSeq >> (56 - 8*i))
	}
}

func (c *recordCipher) prefixLen() int {
	if c.explicit {
		return recordHeaderLen + gcmExplicitLen
	}
	return recordHeaderLen
}

// additionalData is the AEAD's additional data of a record.
func additionalData(ad *[13]byte, epochSeq uint64, typ byte, n int) {
	binary.BigEndian.PutUint64(ad[0:8], epochSeq)
	ad[8] = typ
	ad[9], ad[10] = dtls12Version[0], dtls12Version[1]
	binary.BigEndian.PutUint16(ad[11:13], uint16(n))
}

// recordSealer seals one direction's records of one epoch. It is not
// safe for concurrent use: its user serializes sealing, and sending too,
// so that records go out in sequence order (a peer's replay window is
// finite). seq may be read at any time.
type recordSealer struct {
	c       recordCipher
	epoch   uint16
	seq     atomic.Uint64 // the next sequence number
	scratch recordScratch
}

// recordScratch holds a nonce and additional data outside the stack (an
// AEAD interface call would move them to the heap at every record).
type recordScratch struct {
	nonce [12]byte
	ad    [13]byte
}

// begin appends a record's header and explicit nonce to dst, whose
// plaintext the caller then appends; finish seals it. start is where the
// record begins in dst.
func (s *recordSealer) begin(dst []byte) (out []byte, start int) {
	start = len(dst)
	var room [recordHeaderLen + gcmExplicitLen]byte
	return append(dst, room[:s.c.prefixLen()]...), start
}

// finish seals the record that begin started at dst[start:], as type typ
// with the next sequence number, and returns dst with the tag appended.
// Out of sequence numbers (2^48 records) it returns errRecordSeqLimit and
// dst cut back to start.
func (s *recordSealer) finish(dst []byte, start int, typ byte) ([]byte, error) {
	seq := s.seq.Add(1) - 1
	if seq > maxRecordSeq {
		s.seq.Store(maxRecordSeq + 1)
		return dst[:start], errRecordSeqLimit
	}
	epochSeq := uint64(s.epoch)<<48 | seq
	pre := start + s.c.prefixLen()
	n := len(dst) - pre
	h := dst[start : start+recordHeaderLen]
	h[0] = typ
	h[1], h[2] = dtls12Version[0], dtls12Version[1]
	binary.BigEndian.PutUint64(h[3:11], epochSeq)
	binary.BigEndian.PutUint16(h[11:13], uint16(len(dst)-start-recordHeaderLen+recordTagLen))
	if s.c.explicit {
		binary.BigEndian.PutUint64(dst[start+recordHeaderLen:], epochSeq)
	}
	sc := &s.scratch
	s.c.nonce(&sc.nonce, epochSeq)
	additionalData(&sc.ad, epochSeq, typ, n)
	return s.c.aead.Seal(dst[:pre], sc.nonce[:], dst[pre:], sc.ad[:]), nil
}

// appendFrame appends one record of application data holding an
// OpenConnect frame over DTLS: its type byte, then payload.
func (s *recordSealer) appendFrame(dst []byte, typ byte, payload []byte) ([]byte, error) {
	dst, start := s.begin(dst)
	dst = append(dst, typ)
	dst = append(dst, payload...)
	return s.finish(dst, start, recordApplicationData)
}

// recordOpener opens the records of one direction and epoch. It is not
// safe for concurrent use.
type recordOpener struct {
	c       recordCipher
	epoch   uint16
	scratch recordScratch
}

// nextRecord splits the first record off a datagram. ok is false when d
// does not start with a whole record header and fragment.
func nextRecord(d []byte) (rec, rest []byte, ok bool) {
	if len(d) < recordHeaderLen {
		return nil, nil, false
	}
	n := recordHeaderLen + int(binary.BigEndian.Uint16(d[11:13]))
	if len(d) < n {
		return nil, nil, false
	}
	return d[:n:n], d[n:], true
}

// recordEpoch is a record header's epoch.
func recordEpoch(rec []byte) uint16 { return binary.BigEndian.Uint16(rec[3:5]) }

// open authenticates and decrypts rec (one whole record, as nextRecord
// split it) in place. plaintext is part of rec. The caller checks seq
// against its replay window after open succeeded, never before.
func (o *recordOpener) open(rec []byte) (typ byte, seq uint64, plaintext []byte, err error) {
	if len(rec) < recordHeaderLen || int(binary.BigEndian.Uint16(rec[11:13])) != len(rec)-recordHeaderLen {
		return 0, 0, nil, errRecordMalformed
	}
	if rec[1] != dtls12Version[0] || rec[2] != dtls12Version[1] {
		return 0, 0, nil, errRecordMalformed
	}
	epochSeq := binary.BigEndian.Uint64(rec[3:11])
	if uint16(epochSeq>>48) != o.epoch {
		return 0, 0, nil, errRecordEpoch
	}
	pre := o.c.prefixLen()
	if len(rec) < pre+recordTagLen {
		return 0, 0, nil, errRecordMalformed
	}
	typ = rec[0]
	sc := &o.scratch
	if o.c.explicit {
		copy(sc.nonce[:4], o.c.iv[:4])
		copy(sc.nonce[4:], rec[recordHeaderLen:pre])
	} else {
		o.c.nonce(&sc.nonce, epochSeq)
	}
	additionalData(&sc.ad, epochSeq, typ, len(rec)-pre-recordTagLen)
	plaintext, err = o.c.aead.Open(rec[pre:pre], sc.nonce[:], rec[pre:], sc.ad[:])
	if err != nil {
		return 0, 0, nil, errRecordMAC
	}
	return typ, epochSeq & maxRecordSeq, plaintext, nil
}

// pionState is what ptun reads of pion's State.MarshalBinary snapshot
// (gob matches fields by name; pion's serializedState has more).
type pionState struct {
	HandshakeComplete         bool
	LocalEpoch, RemoteEpoch   uint16
	LocalRandom, RemoteRandom [32]byte
	CipherSuiteID             uint16
	MasterSecret              []byte
	SequenceNumber            uint64 // the next local sequence number of LocalEpoch
	RemoteSequenceNumber      uint64 // one past the highest epoch-1 record pion accepted
	IsClient                  bool
}

// pionStateOf reads an established connection's state.
func pionStateOf(c *dtls.Conn) (pionState, error) {
	st, ok := c.ConnectionState()
	if !ok {
		return pionState{}, errors.New("openconnect: no DTLS connection state")
	}
	b, err := st.MarshalBinary()
	if err != nil {
		return pionState{}, fmt.Errorf("openconnect: DTLS state: %w", err)
	}
	var ps pionState
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&ps); err != nil {
		return pionState{}, fmt.Errorf("openconnect: DTLS state: %w", err)
	}
	return ps, nil
}

// recordLayer is a DTLS connection's epoch-1 protection, taken over from
// pion: tx seals this side's records, rx opens the peer's, and txOpen
// opens this side's own (pion's late writes, which are sealed again with
// tx's sequence numbers).
type recordLayer struct {
	suite  dtls.CipherSuiteID
	tx     recordSealer
	rx     recordOpener
	txOpen recordOpener
	// rxNext is one past the highest peer sequence number pion accepted:
	// every number below it counts as seen.
	rxNext uint64
}

// newRecordLayer derives the keys of a state pion reached at the end of a
// handshake, and continues its sequence numbers.
func newRecordLayer(ps pionState) (*recordLayer, error) {
	if !ps.HandshakeComplete || ps.LocalEpoch != 1 || ps.RemoteEpoch != 1 {
		return nil, fmt.Errorf("openconnect: DTLS state not at epoch 1 (complete %v, epochs %d/%d)",
			ps.HandshakeComplete, ps.LocalEpoch, ps.RemoteEpoch)
	}
	if len(ps.MasterSecret) != 48 {
		return nil, fmt.Errorf("openconnect: DTLS master secret of %d bytes", len(ps.MasterSecret))
	}
	if ps.SequenceNumber > maxRecordSeq || ps.RemoteSequenceNumber > maxRecordSeq+1 {
		return nil, errRecordSeqLimit
	}
	clientRandom, serverRandom := ps.RemoteRandom, ps.LocalRandom
	if ps.IsClient {
		clientRandom, serverRandom = ps.LocalRandom, ps.RemoteRandom
	}
	suite := dtls.CipherSuiteID(ps.CipherSuiteID)
	client, server, err := deriveRecordCiphers(suite, ps.MasterSecret, clientRandom[:], serverRandom[:])
	if err != nil {
		return nil, err
	}
	local, remote := server, client
	if ps.IsClient {
		local, remote = client, server
	}
	rl := &recordLayer{suite: suite, rxNext: ps.RemoteSequenceNumber}
	rl.tx.c, rl.tx.epoch = local, 1
	rl.tx.seq.Store(ps.SequenceNumber)
	rl.rx.c, rl.rx.epoch = remote, 1
	rl.txOpen.c, rl.txOpen.epoch = local, 1
	return rl, nil
}

// deriveRecordCiphers makes both directions' keys from the key block
// (RFC 5246 §6.3: PRF(master_secret, "key expansion", server_random +
// client_random), cut into client and server write keys, then IVs;
// these AEAD suites have no MAC keys).
func deriveRecordCiphers(suite dtls.CipherSuiteID, master, clientRandom, serverRandom []byte) (client, server recordCipher, err error) {
	var keyLen, ivLen int
	switch suite {
	case dtls.TLS_PSK_WITH_AES_128_GCM_SHA256:
		keyLen, ivLen = 16, 4
	case dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256:
		keyLen, ivLen = chacha20poly1305.KeySize, chacha20poly1305.NonceSize
	default:
		return client, server, fmt.Errorf("openconnect: no record layer for DTLS suite %v", suite)
	}
	seed := make([]byte, 0, len(serverRandom)+len(clientRandom))
	seed = append(append(seed, serverRandom...), clientRandom...)
	kb := prfSHA256(master, "key expansion", seed, 2*keyLen+2*ivLen)
	mk := func(key, iv []byte) (recordCipher, error) {
		c := recordCipher{explicit: suite == dtls.TLS_PSK_WITH_AES_128_GCM_SHA256}
		copy(c.iv[:], iv)
		if c.explicit {
			b, err := aes.NewCipher(key)
			if err != nil {
				return c, err
			}
			c.aead, err = cipher.NewGCM(b)
			return c, err
		}
		var err error
		c.aead, err = chacha20poly1305.New(key)
		return c, err
	}
	if client, err = mk(kb[:keyLen], kb[2*keyLen:2*keyLen+ivLen]); err != nil {
		return client, server, err
	}
	server, err = mk(kb[keyLen:2*keyLen], kb[2*keyLen+ivLen:])
	return client, server, err
}

// prfSHA256 is TLS 1.2's PRF with SHA-256 (RFC 5246 §5): P_SHA256(secret,
// label + seed), n bytes of it.
func prfSHA256(secret []byte, label string, seed []byte, n int) []byte {
	ls := append([]byte(label), seed...)
	mac := hmac.New(sha256.New, secret)
	mac.Write(ls)
	a := mac.Sum(nil) // A(1)
	out := make([]byte, 0, n+sha256.Size)
	for len(out) < n {
		mac.Reset()
		mac.Write(a)
		mac.Write(ls)
		out = mac.Sum(out)
		mac.Reset()
		mac.Write(a)
		a = mac.Sum(a[:0])
	}
	return out[:n]
}
