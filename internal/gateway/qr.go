package gateway

import (
	"fmt"
	"strings"

	qr "github.com/piglig/go-qr"
)

// An exported config as a QR code, for the apps' "scan from QR code". The
// encoding is github.com/piglig/go-qr's (a port of Nayuki's QR Code
// generator); this file only chooses its settings and draws it in a
// terminal.

// QR code settings: error correction Low at least (the library raises it
// when that costs no larger symbol), as `qrencode` does for wg-quick
// configs, so that a config with many routes still fits; a quiet zone of
// the 4 modules the standard asks for.
const (
	qrECC    = qr.Low
	qrBorder = 4
	qrScale  = 8 // pixels per module in the PNG
)

// encodeQR is text's QR code, or an error saying it is too long for one.
func encodeQR(text string) (*qr.QrCode, error) {
	code, err := qr.EncodeText(text, qrECC)
	if err != nil {
		return nil, fmt.Errorf("the config (%d bytes) does not fit in a QR code (%v): export it without --qr and import the file", len(text), err)
	}
	return code, nil
}

// CheckQR says whether text fits in a QR code.
func CheckQR(text string) error {
	_, err := encodeQR(text)
	return err
}

// QRPNG is text's QR code as a PNG image: black modules on white, 8 pixels
// each, with the quiet zone.
func QRPNG(text string) ([]byte, error) {
	code, err := encodeQR(text)
	if err != nil {
		return nil, err
	}
	return code.ToPNGBytes(qr.NewQrCodeImgConfig(qrScale, qrBorder))
}

// QRTerminal is text's QR code for a terminal: two modules a character,
// with the half-block characters of UTF-8, and colors set (white
// foreground on a black background, reset at each line's end) so that it
// scans the same on dark and light terminals. The light modules are drawn.
func QRTerminal(text string) (string, error) {
	code, err := encodeQR(text)
	if err != nil {
		return "", err
	}
	light := func(x, y int) bool { return !code.Module(x, y) } // outside the symbol: the quiet zone, light
	var b strings.Builder
	for y := -qrBorder; y < code.Size()+qrBorder; y += 2 {
		b.WriteString("\x1b[40;97m")
		for x := -qrBorder; x < code.Size()+qrBorder; x++ {
			top, bottom := light(x, y), light(x, y+1)
			switch {
			case top && bottom:
				b.WriteString("█")
			case top:
				b.WriteString("▀")
			case bottom:
				b.WriteString("▄")
			default:
				b.WriteByte(' ')
			}
		}
		b.WriteString("\x1b[0m\n")
	}
	return b.String(), nil
}
