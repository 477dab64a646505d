package uapi

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/ptun-vpn/ptun/metrics"
	"github.com/ptun-vpn/ptun/wgcfg"
)

// clientTimeout bounds a whole client exchange, so a hung device cannot hang
// `ptun show`.
const clientTimeout = 30 * time.Second

// exchange sends request on a new connection to sock and reads the answer
// with read.
func exchange[T any](sock, request string, limit int, read func(*lineReader) (T, error)) (T, error) {
	var zero T
	c, err := net.DialTimeout("unix", sock, clientTimeout)
	if err != nil {
		return zero, fmt.Errorf("uapi: connecting to %s: %w", sock, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(clientTimeout))
	if _, err := c.Write([]byte(request)); err != nil {
		return zero, fmt.Errorf("uapi: writing to %s: %w", sock, err)
	}
	return read(newLineReader(bufio.NewReader(c), limit))
}

// Get asks the device behind socket sock for its state (get=1). A device
// error is an *wgcfg.Error carrying the device's errno.
func Get(sock string) (*wgcfg.DeviceState, error) {
	return exchange(sock, "get=1\n\n", maxAnswerSize, parseGet)
}

// Set sends cfg to the device behind socket sock as one set=1 request. A
// refusal is an *wgcfg.Error carrying the device's errno.
func Set(sock string, cfg *wgcfg.DeviceConfig) error {
	b := []byte("set=1\n")
	b, err := appendSet(b, cfg)
	if err != nil {
		return err
	}
	return sendSet(sock, string(append(b, '\n')))
}

// SetRaw sends body, key=value lines without the set=1 line and the final
// blank line, as one set=1 request. A trailing newline on body is optional;
// a blank line inside it is an error (it would end the request early).
func SetRaw(sock string, body string) error {
	body = strings.TrimRight(body, "\n")
	if strings.Contains(body, "\n\n") || strings.HasPrefix(body, "\n") {
		return &wgcfg.Error{Errno: syscall.EINVAL, Err: errors.New("uapi: set body contains a blank line")}
	}
	req := "set=1\n"
	if body != "" {
		req += body + "\n"
	}
	return sendSet(sock, req+"\n")
}

func sendSet(sock, req string) error {
	if len(req) > requestLimit {
		return &wgcfg.Error{Errno: syscall.EMSGSIZE, Err: ErrTooLarge}
	}
	errno, err := exchange(sock, req, maxAnswerSize, parseStatus)
	if err != nil {
		return err
	}
	if errno != 0 {
		return &wgcfg.Error{Errno: errno, Err: errors.New("uapi: set refused by the device")}
	}
	return nil
}

// Stats asks the device behind socket sock for its counters (stats=1, a
// ptun extension). A device without counters answers EOPNOTSUPP.
func Stats(sock string) ([]metrics.Counter, error) {
	return exchange(sock, "stats=1\n\n", maxAnswerSize, parseStats)
}
