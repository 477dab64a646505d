package transport

import "errors"

// ErrAlreadyOpen is returned by Open on a Transport that is open; Close it first.
var ErrAlreadyOpen = errors.New("transport: already open")
