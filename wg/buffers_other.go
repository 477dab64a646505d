//go:build !linux

package wg

func mapBufferSet(int) *bufferSet { return nil }

func unmapBufferSet([]byte) {}
