package main

import (
	"fmt"
	"log"
	"log/syslog"
	"os"
	"path/filepath"
)

// Where a daemon logs by default (variables so tests can point them
// elsewhere).
var (
	// syslogSocket is the local syslog socket; on systemd machines
	// journald listens on it.
	syslogSocket = "/dev/log"
	// logDir holds IFNAME.log for daemons that cannot reach syslog.
	logDir = "/var/log/ptun"
)

// syslogTag is the tag (program name) of ptun's syslog messages.
const syslogTag = "ptun"

// logKind is a kind of log destination.
type logKind int

const (
	logToFile   logKind = iota // append to a file
	logToStderr                // the foreground's stderr
	logToSyslog                // syslogSocket
)

// logDestination decides where the daemon of interface ifname logs:
// --log FILE (logFlag) wins; in the foreground, stderr; in the background,
// syslog if it answers (haveSyslog), else logDir/IFNAME.log. path is the
// file for logToFile.
func logDestination(logFlag string, foreground, haveSyslog bool, ifname string) (kind logKind, path string) {
	switch {
	case logFlag != "":
		return logToFile, logFlag
	case foreground:
		return logToStderr, ""
	case haveSyslog:
		return logToSyslog, ""
	default:
		return logToFile, filepath.Join(logDir, ifname+".log")
	}
}

// openLog opens the log of the daemon of interface ifname, chosen by
// logDestination, and returns a logger writing to it and the function that
// closes it. It creates logDir (mode 0700) when it is the destination;
// files are created with mode 0600 and appended to.
func openLog(logFlag string, foreground bool, ifname string) (*log.Logger, func(), error) {
	var sys *syslog.Writer
	if logFlag == "" && !foreground {
		sys = dialSyslog()
	}
	kind, path := logDestination(logFlag, foreground, sys != nil, ifname)
	switch kind {
	case logToSyslog:
		// syslog adds the time, the tag and the pid.
		return log.New(sys, ifname+": ", 0), func() { sys.Close() }, nil
	case logToStderr:
		return log.New(os.Stderr, "ptun: ", log.LstdFlags), func() {}, nil
	}
	what := "--log"
	if logFlag == "" {
		what = "log"
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, nil, fmt.Errorf("log: %w (run as root, or pass -f or --log FILE)", err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	return log.New(f, "ptun: ", log.LstdFlags), func() { f.Close() }, nil
}

// dialSyslog connects to the local syslog socket (a datagram socket as
// journald and rsyslog make, or a stream one), or returns nil if nothing
// answers there.
func dialSyslog() *syslog.Writer {
	for _, network := range []string{"unixgram", "unix"} {
		w, err := syslog.Dial(network, syslogSocket, syslog.LOG_INFO|syslog.LOG_DAEMON, syslogTag)
		if err == nil {
			return w
		}
	}
	return nil
}
