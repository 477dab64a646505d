package gateway

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/google/nftables"

	"github.com/ptun-vpn/ptun/internal/netns"
	"github.com/ptun-vpn/ptun/internal/testenv"
)

// TestMasqueradeAfterACrash: a gateway that starts where one died (its
// nftables table left behind, as after a SIGKILL and a restart by systemd)
// has one masquerade rule, not two, and removes the table when it stops.
func TestMasqueradeAfterACrash(t *testing.T) {
	testenv.RequireRoot(t)
	var b [4]byte
	rand.Read(b[:])
	ns, err := netns.New("ptun-gwtest-" + hex.EncodeToString(b[:]))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	const ifname = "ptun-gw"
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: "ptun_gateway_" + ifname}
	rules := func() (int, error) {
		c, err := nftables.New()
		if err != nil {
			return 0, err
		}
		rs, err := c.GetRules(table, &nftables.Chain{Name: "postrouting", Table: table})
		return len(rs), err
	}
	err = ns.Do(func() error {
		var crashed hostState // never undone
		if err := crashed.masquerade(ifname); err != nil {
			return err
		}
		var restarted hostState
		if err := restarted.masquerade(ifname); err != nil {
			return err
		}
		if n, err := rules(); err != nil || n != 1 {
			t.Errorf("after a restart: %d masquerade rules (%v), want 1", n, err)
		}
		restarted.undo(t.Logf)
		c, err := nftables.New()
		if err != nil {
			return err
		}
		ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, tb := range ts {
			if tb.Name == table.Name {
				t.Errorf("table %s is left after the gateway stopped", tb.Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
