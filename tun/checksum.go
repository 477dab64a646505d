package tun

import (
	"encoding/binary"
	"math/bits"
)

// IP protocol numbers used by the offload code.
const (
	ipProtoTCP = 6
	ipProtoUDP = 17
)

// onesSum returns the RFC 1071 one's complement sum of b, read as big-endian
// 16-bit words (a trailing odd byte is padded with zero), folded to 16 bits
// and not complemented.
//
// It adds 64-bit little-endian words with carry (32 bytes per iteration) and
// swaps the bytes of the folded result at the end: one's complement addition
// commutes with byte swapping, so this equals the big-endian word sum.
func onesSum(b []byte) uint16 {
	var acc, carry uint64
	for len(b) >= 32 {
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[0:8]), carry)
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[8:16]), carry)
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[16:24]), carry)
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[24:32]), carry)
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[0:8]), carry)
		b = b[8:]
	}
	if len(b) >= 4 {
		acc, carry = bits.Add64(acc, uint64(binary.LittleEndian.Uint32(b[0:4])), carry)
		b = b[4:]
	}
	if len(b) >= 2 {
		acc, carry = bits.Add64(acc, uint64(binary.LittleEndian.Uint16(b[0:2])), carry)
		b = b[2:]
	}
	if len(b) == 1 {
		// A big-endian word whose low byte is padding: in the
		// little-endian sum the byte is the low half.
		acc, carry = bits.Add64(acc, uint64(b[0]), carry)
	}
	acc, carry = bits.Add64(acc, 0, carry)
	acc += carry // cannot carry again: acc was just wrapped to a small value

	// Fold 64 -> 32 -> 16 bits with end-around carry.
	s := (acc >> 32) + (acc & 0xffffffff)
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	return bits.ReverseBytes16(uint16(s))
}

// onesAdd adds two folded one's complement sums.
func onesAdd(a, b uint16) uint16 {
	s := uint32(a) + uint32(b)
	return uint16(s + s>>16)
}

// checksum returns the Internet checksum (complemented sum) of b with
// initial added in, for a header whose checksum field is zero or excluded.
func checksum(b []byte, initial uint16) uint16 {
	return ^onesAdd(onesSum(b), initial)
}

// pseudoHeaderSum returns the folded sum of the TCP/UDP pseudo-header: the
// source and destination addresses (addrs is them back to back: 8 bytes for
// IPv4, 32 for IPv6), the protocol and the L4 length.
func pseudoHeaderSum(addrs []byte, proto uint8, l4Len int) uint16 {
	s := onesSum(addrs)
	s = onesAdd(s, uint16(proto))
	// l4Len may exceed 16 bits only for malformed input; fold it too.
	s = onesAdd(s, uint16(l4Len>>16))
	return onesAdd(s, uint16(l4Len))
}
