// containerd's own snapshotter test suite (snapshots/testsuite of containerd
// 1.6.20), run against `lazycrypt serve` through containerd's proxy
// snapshotter client, as containerd itself talks to lazycrypt.
//
// The suite makes a fresh snapshotter per test from an empty root
// directory: each test gets a `lazycrypt serve` of its own, with that root
// and a socket beside it. LAZYCRYPT_BIN names the binary (tests/
// containerd_suite.rs sets it). Built offline in GOPATH mode against
// Debian's golang-github-containerd-containerd-dev.
package containerdsuite

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	clog "github.com/containerd/containerd/log"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

// A log shared with the process writing it; read when a test fails.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Starts `lazycrypt serve` on root and connects the proxy client to it.
func newSnapshotter(bin string) testsuite.SnapshotterFunc {
	return func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		dir := filepath.Dir(root)
		socket := filepath.Join(dir, "lazycrypt.sock")
		// An empty configuration: nothing of the host's /etc/lazycrypt.
		config := filepath.Join(dir, "config.toml")
		if err := os.WriteFile(config, nil, 0600); err != nil {
			return nil, nil, err
		}
		log := &logBuf{}
		cmd := exec.Command(bin, "serve", "--config", config, "--root", root, "--address", socket)
		cmd.Env = append(os.Environ(), "LAZYCRYPT_LOG=info")
		cmd.Stdout = log
		cmd.Stderr = log
		if err := cmd.Start(); err != nil {
			return nil, nil, fmt.Errorf("starting %s: %w", bin, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() error {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				if err != nil {
					return fmt.Errorf("lazycrypt serve: %v\n%s", err, log)
				}
				return nil
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
				return fmt.Errorf("lazycrypt serve did not stop on SIGTERM\n%s", log)
			}
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := os.Stat(socket); err == nil {
				break
			}
			select {
			case err := <-exited:
				return nil, nil, fmt.Errorf("lazycrypt serve exited (%v)\n%s", err, log)
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				_ = stop()
				return nil, nil, fmt.Errorf("lazycrypt serve did not start\n%s", log)
			}
		}
		conn, err := grpc.DialContext(ctx, "lazycrypt",
			grpc.WithInsecure(),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", socket)
			}))
		if err != nil {
			_ = stop()
			return nil, nil, err
		}
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "lazycrypt")
		cleanup := func() error {
			conn.Close()
			err := stop()
			// The suite's logger writes to the test's log, which go test
			// prints when that test fails.
			clog.G(ctx).Infof("lazycrypt serve on %s logged:\n%s", root, log)
			return err
		}
		return sn, cleanup, nil
	}
}

func TestLazycryptSnapshotterSuite(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("containerd's snapshotter suite mounts: run it as root")
	}
	bin := os.Getenv("LAZYCRYPT_BIN")
	if bin == "" {
		t.Fatal("LAZYCRYPT_BIN must name the lazycrypt binary")
	}
	testsuite.SnapshotterSuite(t, "lazycrypt", newSnapshotter(bin))
}
