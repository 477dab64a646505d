package transport

import "errors"

// ErrAlreadyOpen is returned by Open on a Transport that is open; Close it first.
var ErrAlreadyOpen = errors.New("transport: already open")

// ErrSourceCleared is returned by Send when every datagram went out, but
// not from ep.Local, which is no longer an address of this host (it was
// removed, or its interface went down): the route picked the source. The
// caller should store ep.WithoutLocal() in place of ep, so that later sends
// do not try the vanished address first. Nothing was dropped.
var ErrSourceCleared = errors.New("transport: local source address is gone; sent from the route's source")
