package noise

import (
	"github.com/ptun-vpn/ptun/wg/wire"
)

// Keys are the session keys a completed handshake yields. The device builds
// its transport AEADs from Send and Receive and should then clear them.
// Send of one side equals Receive of the other.
type Keys struct {
	Send, Receive [KeySize]byte
	// LocalIndex is the index the remote side puts in the packets it sends
	// us; RemoteIndex is the one we put in the packets we send.
	LocalIndex, RemoteIndex uint32
	// Initiator is true on the side that sent the initiation.
	Initiator bool
}

// InitiatorState is the secret state kept between sending an initiation and
// receiving its response. It is single use and not safe for concurrent use;
// the caller serialises access (typically under the peer's handshake lock).
type InitiatorState struct {
	hash, chainKey [hashSize]byte
	ephemeral      PrivateKey
	remoteStatic   PublicKey
	localIndex     uint32
	used           bool
}

// CreateInitiation builds a handshake initiation from local to remote,
// carrying localIndex as its sender index and now as its (encrypted)
// timestamp. MAC1 and MAC2 are left zero: the caller marshals the message
// and has the peer's CookieGenerator fill them. It returns ErrInvalidKey if
// remote is zero or of low order, and an error if crypto/rand fails.
func CreateInitiation(local *Local, remote PublicKey, localIndex uint32, now Timestamp) (*wire.Initiation, *InitiatorState, error) {
	if local == nil {
		return nil, nil, ErrInvalidKey
	}
	staticStatic, ok := local.Private.sharedSecret(&remote)
	if !ok {
		return nil, nil, ErrInvalidKey
	}
	defer clear(staticStatic[:])

	st := &InitiatorState{remoteStatic: remote, localIndex: localIndex}
	fail := func(err error) (*wire.Initiation, *InitiatorState, error) {
		*st = InitiatorState{}
		return nil, nil, err
	}
	var err error
	if st.ephemeral, err = GeneratePrivateKey(); err != nil {
		return fail(err)
	}
	msg := &wire.Initiation{Sender: localIndex, Ephemeral: st.ephemeral.PublicKey()}

	// H = HASH(HASH(C || IDENTIFIER) || S_r^pub); C = KDF1(C, E_i^pub).
	st.chainKey = initialChainKey
	st.hash = initialHash
	mixHash(&st.hash, remote[:])
	kdf1(&st.chainKey, msg.Ephemeral[:])
	mixHash(&st.hash, msg.Ephemeral[:])

	// static = AEAD(KDF2(C, DH(E_i, S_r)), S_i^pub, H)
	var key [hashSize]byte
	defer clear(key[:])
	es, ok := st.ephemeral.sharedSecret(&remote)
	if !ok {
		return fail(ErrInvalidKey) // unreachable: remote passed the static check
	}
	kdf2(&st.chainKey, &key, es[:])
	clear(es[:])
	if err := seal(msg.Static[:], &key, local.Public[:], st.hash[:]); err != nil {
		return fail(err)
	}
	mixHash(&st.hash, msg.Static[:])

	// timestamp = AEAD(KDF2(C, DH(S_i, S_r)), TAI64N, H)
	kdf2(&st.chainKey, &key, staticStatic[:])
	if err := seal(msg.Timestamp[:], &key, now[:], st.hash[:]); err != nil {
		return fail(err)
	}
	mixHash(&st.hash, msg.Timestamp[:])
	return msg, st, nil
}

// LocalIndex returns the sender index of the initiation st belongs to.
func (st *InitiatorState) LocalIndex() uint32 { return st.localIndex }

// RemoteStatic returns the public key the initiation was made for.
func (st *InitiatorState) RemoteStatic() PublicKey { return st.remoteStatic }

// ConsumeResponse authenticates msg as the answer to st's initiation and
// derives the session keys. msg.Receiver must equal the initiation's
// localIndex; the device checks msg's MACs before calling. psk is the peer's
// preshared key (zero for none); local must be the identity the initiation
// was made with.
//
// On success st is cleared and any further call returns ErrStateUsed. On
// ErrAuthFailed (wrong receiver, bad ephemeral, wrong PSK, tampered message)
// st is unchanged: a forged response cannot abort the handshake, and the
// genuine response may still arrive.
func (st *InitiatorState) ConsumeResponse(local *Local, psk PresharedKey, msg *wire.Response) (Keys, error) {
	if st == nil || st.used {
		return Keys{}, ErrStateUsed
	}
	if local == nil || msg == nil || msg.Receiver != st.localIndex {
		return Keys{}, ErrAuthFailed
	}
	hash, chainKey := st.hash, st.chainKey
	var tau, key [hashSize]byte
	defer func() {
		clear(hash[:])
		clear(chainKey[:])
		clear(tau[:])
		clear(key[:])
	}()

	kdf1(&chainKey, msg.Ephemeral[:])
	mixHash(&hash, msg.Ephemeral[:])
	remoteEphemeral := PublicKey(msg.Ephemeral)
	ee, ok := st.ephemeral.sharedSecret(&remoteEphemeral)
	if !ok {
		return Keys{}, ErrAuthFailed
	}
	kdf1(&chainKey, ee[:])
	clear(ee[:])
	se, ok := local.Private.sharedSecret(&remoteEphemeral)
	if !ok {
		return Keys{}, ErrAuthFailed
	}
	kdf1(&chainKey, se[:])
	clear(se[:])

	kdf3(&chainKey, &tau, &key, psk[:])
	mixHash(&hash, tau[:])
	if !open(nil, &key, msg.Empty[:], hash[:]) {
		return Keys{}, ErrAuthFailed
	}

	k := Keys{LocalIndex: st.localIndex, RemoteIndex: msg.Sender, Initiator: true}
	kdf(&chainKey, nil, &tau, &key)
	k.Send, k.Receive = tau, key
	*st = InitiatorState{used: true}
	return k, nil
}

// InitiationInfo is what a valid initiation reveals, plus the secret
// chaining state needed to answer it. It is single use: CreateResponse
// clears the secret part.
type InitiationInfo struct {
	RemoteStatic PublicKey // the initiator's static public key: look the peer up by it
	RemoteIndex  uint32    // the initiator's sender index
	Timestamp    Timestamp // the initiator's TAI64N timestamp: reject if not After the peer's last

	hash, chainKey  [hashSize]byte
	remoteEphemeral PublicKey
	used            bool
}

// ConsumeInitiation decrypts and authenticates an initiation addressed to
// local: it recovers the initiator's static key and proves the initiator
// holds its private key by opening the timestamp. It does not check MACs
// (the device does that first), look the peer up or judge the timestamp;
// the caller does those with the returned info and then calls
// CreateResponse. Any failure is ErrAuthFailed.
func ConsumeInitiation(local *Local, msg *wire.Initiation) (*InitiationInfo, error) {
	if local == nil || msg == nil {
		return nil, ErrAuthFailed
	}
	info := &InitiationInfo{RemoteIndex: msg.Sender, remoteEphemeral: msg.Ephemeral}
	var key [hashSize]byte
	defer clear(key[:])
	fail := func() (*InitiationInfo, error) {
		clear(info.hash[:])
		clear(info.chainKey[:])
		return nil, ErrAuthFailed
	}

	info.chainKey = initialChainKey
	info.hash = initialHash
	mixHash(&info.hash, local.Public[:])
	kdf1(&info.chainKey, msg.Ephemeral[:])
	mixHash(&info.hash, msg.Ephemeral[:])

	es, ok := local.Private.sharedSecret(&info.remoteEphemeral)
	if !ok {
		return fail()
	}
	kdf2(&info.chainKey, &key, es[:])
	clear(es[:])
	if !open(info.RemoteStatic[:], &key, msg.Static[:], info.hash[:]) {
		return fail()
	}
	mixHash(&info.hash, msg.Static[:])

	ss, ok := local.Private.sharedSecret(&info.RemoteStatic)
	if !ok {
		return fail()
	}
	kdf2(&info.chainKey, &key, ss[:])
	clear(ss[:])
	if !open(info.Timestamp[:], &key, msg.Timestamp[:], info.hash[:]) {
		return fail()
	}
	mixHash(&info.hash, msg.Timestamp[:])
	return info, nil
}

// CreateResponse answers the initiation info came from, with localIndex as
// the response's sender index, and derives the session keys. psk is the
// peer's preshared key (zero for none). MAC1 and MAC2 are left zero for the
// peer's CookieGenerator. info is cleared whatever the outcome; a second
// call returns ErrStateUsed.
func CreateResponse(local *Local, info *InitiationInfo, psk PresharedKey, localIndex uint32) (*wire.Response, Keys, error) {
	if info == nil || info.used {
		return nil, Keys{}, ErrStateUsed
	}
	hash, chainKey := info.hash, info.chainKey
	remoteEphemeral, remoteStatic, remoteIndex := info.remoteEphemeral, info.RemoteStatic, info.RemoteIndex
	clear(info.hash[:])
	clear(info.chainKey[:])
	info.used = true
	if local == nil {
		return nil, Keys{}, ErrInvalidKey
	}
	var tau, key [hashSize]byte
	var ephemeral PrivateKey
	defer func() {
		clear(hash[:])
		clear(chainKey[:])
		clear(tau[:])
		clear(key[:])
		clear(ephemeral[:])
	}()

	var err error
	if ephemeral, err = GeneratePrivateKey(); err != nil {
		return nil, Keys{}, err
	}
	msg := &wire.Response{Sender: localIndex, Receiver: remoteIndex, Ephemeral: ephemeral.PublicKey()}
	kdf1(&chainKey, msg.Ephemeral[:])
	mixHash(&hash, msg.Ephemeral[:])
	ee, ok := ephemeral.sharedSecret(&remoteEphemeral)
	if !ok {
		return nil, Keys{}, ErrAuthFailed
	}
	kdf1(&chainKey, ee[:])
	clear(ee[:])
	es, ok := ephemeral.sharedSecret(&remoteStatic)
	if !ok {
		return nil, Keys{}, ErrAuthFailed
	}
	kdf1(&chainKey, es[:])
	clear(es[:])

	kdf3(&chainKey, &tau, &key, psk[:])
	mixHash(&hash, tau[:])
	if err := seal(msg.Empty[:], &key, nil, hash[:]); err != nil {
		return nil, Keys{}, err
	}

	k := Keys{LocalIndex: localIndex, RemoteIndex: remoteIndex}
	kdf(&chainKey, nil, &tau, &key)
	k.Receive, k.Send = tau, key
	return msg, k, nil
}
