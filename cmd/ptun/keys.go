package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ptun-vpn/ptun/wg/noise"
)

func genKey(w io.Writer) error {
	k, err := noise.GeneratePrivateKey()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, k.Base64())
	return err
}

func genPSK(w io.Writer) error {
	k, err := noise.GeneratePresharedKey()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, k.Base64())
	return err
}

func pubKey(r io.Reader, w io.Writer) error {
	line, err := bufio.NewReader(io.LimitReader(r, 1024)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	k, err := noise.ParsePrivateKeyBase64(strings.TrimSpace(line))
	if err != nil {
		return fmt.Errorf("pubkey: the input is not a base64 private key: %w", err)
	}
	_, err = fmt.Fprintln(w, k.PublicKey().Base64())
	return err
}

// runGenKey is `ptun genkey`.
func runGenKey(args []string) error {
	if err := parseFlags(newFlagSet("genkey"), args, 0); err != nil {
		return err
	}
	return genKey(stdout)
}

// runGenPSK is `ptun genpsk`.
func runGenPSK(args []string) error {
	if err := parseFlags(newFlagSet("genpsk"), args, 0); err != nil {
		return err
	}
	return genPSK(stdout)
}

// runPubKey is `ptun pubkey`.
func runPubKey(args []string) error {
	if err := parseFlags(newFlagSet("pubkey"), args, 0); err != nil {
		return err
	}
	return pubKey(os.Stdin, stdout)
}
