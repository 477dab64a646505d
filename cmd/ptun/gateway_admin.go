package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptun-vpn/ptun/internal/gateway"
	"github.com/ptun-vpn/ptun/internal/registry"
)

// stdin is where `admin add` reads a password (a variable for tests), and
// stdinIsTerminal says whether it is a terminal (then a password is
// generated instead: one typed would echo).
var (
	stdin           io.Reader = os.Stdin
	stdinIsTerminal           = func() bool {
		_, err := unix.IoctlGetTermios(int(os.Stdin.Fd()), unix.TCGETS)
		return err == nil
	}
)

// gatewayAdmin is `ptun gateway admin add|remove|token NAME`.
func gatewayAdmin(args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, gatewayUsage)
		return errHelped
	}
	if len(args) == 0 || (args[0] != "add" && args[0] != "remove" && args[0] != "token") {
		fmt.Fprint(os.Stderr, "ptun gateway admin: add NAME [--generate], remove NAME, or token NAME\nrun 'ptun gateway -h' for help\n")
		return errUsage
	}
	fs, state := gwFlags("admin " + args[0])
	var generate *bool
	if args[0] == "add" {
		generate = fs.Bool("generate", false, "generate the password and print it once (also when stdin is a terminal)")
	}
	pos, err := parseInterspersed(fs, args[1:], 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintf(os.Stderr, "ptun gateway admin %s: the admin's name is missing\n", args[0])
		return errUsage
	}
	name := pos[0]
	switch args[0] {
	case "add":
		password, generated := "", *generate || stdinIsTerminal()
		if generated {
			if password, err = generatePassword(); err != nil {
				return err
			}
		} else if password, err = readPassword(stdin); err != nil {
			return err
		}
		return withRegistry(*state, func(ctx context.Context, c *gateway.Config, reg registry.Registry) error {
			if _, err := reg.AddAdmin(ctx, name, password); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "admin %s added\n", name)
			if generated {
				fmt.Fprintf(stdout, "password (shown once, not stored anywhere in clear):\n%s\n", password)
			}
			if u := c.AdminURL(); u != "" {
				fmt.Fprintf(os.Stderr, "log in at %s/ (the admin page, docs/admin-page.md) or POST %s%s (docs/admin-api.md)\n", u, u, gateway.AdminLoginPath)
			}
			return nil
		})
	case "remove":
		return withRegistry(*state, func(ctx context.Context, _ *gateway.Config, reg registry.Registry) error {
			if err := reg.RemoveAdmin(ctx, name); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "admin %s removed; their tokens and sessions no longer work\n", name)
			return nil
		})
	default: // token
		return withRegistry(*state, func(ctx context.Context, _ *gateway.Config, reg registry.Registry) error {
			tok, secret, err := reg.CreateAdminToken(ctx, name)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "API token %d (%s) for admin %s; shown once, send it as Authorization: Bearer TOKEN:\n%s\n",
				tok.ID, tok.Prefix, name, secret)
			return nil
		})
	}
}

// gatewayUserPasswd is `ptun gateway user passwd NAME [--generate |
// --clear]`: the user's password for OpenConnect (TLS) logins.
func gatewayUserPasswd(args []string) error {
	fs, state := gwFlags("user passwd")
	generate := fs.Bool("generate", false, "generate the password and print it once (also when stdin is a terminal)")
	clearIt := fs.Bool("clear", false, "remove the password: the user's TLS logins are refused")
	pos, err := parseInterspersed(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(os.Stderr, "ptun gateway user passwd: the user's name is missing, such as: ptun gateway user passwd alice --generate")
		return errUsage
	}
	if *generate && *clearIt {
		fmt.Fprintln(os.Stderr, "ptun gateway user passwd: --generate and --clear exclude each other")
		return errUsage
	}
	name := pos[0]
	if *clearIt {
		return withRegistry(*state, func(ctx context.Context, _ *gateway.Config, reg registry.Registry) error {
			if err := reg.ClearUserPassword(ctx, name); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "user %s has no password: their TLS logins are refused, and their sessions end within a second\n", name)
			return nil
		})
	}
	password, generated := "", *generate || stdinIsTerminal()
	if generated {
		if password, err = generatePassword(); err != nil {
			return err
		}
	} else if password, err = readPassword(stdin); err != nil {
		return err
	}
	hash, err := registry.HashPassword(password)
	if err != nil {
		return err
	}
	return withRegistry(*state, func(ctx context.Context, _ *gateway.Config, reg registry.Registry) error {
		if err := reg.SetUserPassword(ctx, name, hash); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "password of user %s set, for OpenConnect logins as %s or %s/DEVICE\n", name, name, name)
		if generated {
			fmt.Fprintf(stdout, "password (shown once, not stored anywhere in clear):\n%s\n", password)
		}
		return nil
	})
}

// generatePassword is a random password: 144 bits, 24 characters.
func generatePassword() (string, error) {
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// readPassword reads a password: the first line of r, without its line
// end.
func readPassword(r io.Reader) (string, error) {
	line, err := bufio.NewReaderSize(io.LimitReader(r, registry.MaxPasswordLen+2), registry.MaxPasswordLen+2).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("reading the password from stdin: %w", err)
	}
	if err != nil && len(line) > registry.MaxPasswordLen {
		return "", fmt.Errorf("the password on stdin is over %d bytes", registry.MaxPasswordLen)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if pw == "" {
		return "", errors.New("no password on stdin: pipe one in (one line), or use --generate")
	}
	return pw, nil
}

// gatewayAdmins is `ptun gateway admins`: the admins and their live
// API tokens.
func gatewayAdmins(args []string) error {
	fs, state := gwFlags("admins")
	if _, err := parseInterspersed(fs, args, 0); err != nil {
		return err
	}
	return withRegistry(*state, func(ctx context.Context, _ *gateway.Config, reg registry.Registry) error {
		admins, err := reg.ListAdmins(ctx)
		if err != nil {
			return err
		}
		for _, a := range admins {
			toks, err := reg.ListAdminTokens(ctx, a.Name)
			if err != nil {
				return err
			}
			var live []string
			for _, t := range toks {
				if t.RevokedAt.IsZero() {
					live = append(live, fmt.Sprintf("%d:%s", t.ID, t.Prefix))
				}
			}
			fmt.Fprintf(stdout, "%s\tsince %s\ttokens %s\n", a.Name, a.CreatedAt.Format(time.RFC3339), strings.Join(append(live, "-")[:max(len(live), 1)], ","))
		}
		return nil
	})
}
