package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// PrivateRabbitMQ boots a RabbitMQ node of t's own, on free ports of
// 127.0.0.1 with its data in a temporary directory, and stops it (and
// removes the directory) at t's cleanup. It returns the node's amqp:// URL
// and a function that restarts the RabbitMQ application (rabbitmqctl
// stop_app, start_app) and returns once the node accepts AMQP connections
// again: every connection is closed by it; durable exchanges, queues and
// bindings and persistent messages survive it, transient ones do not.
//
// Tests that kill connections or restart the broker use it instead of the
// shared node of RabbitMQURL, which tests in other processes are using. It
// needs the RabbitMQ server installed locally (the recipe of services.sh:
// /usr/lib/rabbitmq/bin, run as the current user); without it the test is
// Unavailable. Booting takes several seconds (about 5-10 on two cores).
func PrivateRabbitMQ(t testing.TB) (url string, restart func(ctx context.Context) error) {
	t.Helper()
	sbin, err := rabbitSbin()
	if err != nil {
		Unavailable(t, "rabbitmq private node", err.Error())
		return "", nil
	}
	start := time.Now()
	var n *rabbitNode
	for attempt := 1; ; attempt++ {
		n, err = bootRabbitNode(sbin)
		if err == nil || n == nil || attempt == 3 || !n.portClash() {
			break
		}
		// Another process took one of its ports before it bound them.
		t.Logf("testenv: private rabbitmq: node %s found a port taken; booting another on other ports", n.name)
		if err := n.stop(); err != nil {
			t.Logf("testenv: private rabbitmq: %v", err)
		}
	}
	if n != nil {
		t.Cleanup(func() {
			if err := n.stop(); err != nil {
				t.Logf("testenv: private rabbitmq: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("testenv: private rabbitmq: %v", err)
		return "", nil
	}
	t.Logf("testenv: private rabbitmq node %s booted in %v (%s)", n.name, time.Since(start).Round(time.Millisecond), n.url)
	return n.url, n.restart
}

// rabbitSbin finds the directory of the rabbitmq-server and rabbitmqctl
// scripts that run as the current user (Debian's /usr/sbin wrappers switch
// to the rabbitmq user and its data directory).
func rabbitSbin() (string, error) {
	const debian = "/usr/lib/rabbitmq/bin"
	if _, err := os.Stat(filepath.Join(debian, "rabbitmq-server")); err == nil {
		return debian, nil
	}
	if p, err := exec.LookPath("rabbitmq-server"); err == nil {
		if b, err := os.ReadFile(p); err == nil && !bytes.Contains(b, []byte("su rabbitmq")) {
			return filepath.Dir(p), nil
		}
	}
	return "", errors.New("no local RabbitMQ server (install rabbitmq-server, e.g. via `make services`)")
}

type rabbitNode struct {
	name, url, dir string
	sbin           string
	env            []string
	cmd            *exec.Cmd
	exited         chan struct{}
	epmdPort       int
}

// freePort returns a port of 127.0.0.1 that is free now.
func freePort() (int, error) { return freeRange(1) }

// freeRange returns the first of n consecutive ports of 127.0.0.1 that are
// free now. They are picked at random below the kernel's ephemeral range,
// from which it numbers client connections and listeners on port 0 by
// itself: a node takes seconds to bind its ports after they were picked,
// and binds them again when restarted, and a port of that range could be
// taken meanwhile by any connection of the machine (the node then fails to
// boot with eaddrinuse). Nodes of other test processes pick from the same
// ports; bootRabbitNode's caller retries on a clash.
func freeRange(n int) (int, error) {
	lo, hi := privatePortRange()
	for range 200 {
		base := lo + rand.IntN(hi-lo-n)
		ok := true
		for p := base; p < base+n && ok; p++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				ok = false
				continue
			}
			l.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, fmt.Errorf("no %d consecutive free ports in [%d, %d)", n, lo, hi)
}

// privatePortRange is where freeRange picks ports: from 20000 up to 30000
// (services.sh's default ports lie above) or the start of the kernel's
// ephemeral range if that is lower, or above the ephemeral range when that
// starts too low.
func privatePortRange() (lo, hi int) {
	eLo, eHi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if a, err1 := strconv.Atoi(f[0]); err1 == nil {
				if z, err2 := strconv.Atoi(f[1]); err2 == nil {
					eLo, eHi = a, z
				}
			}
		}
	}
	if eLo >= 21000 {
		return 20000, min(eLo, 30000)
	}
	if eHi <= 64000 {
		return eHi + 1, 65535
	}
	return 1024, 65535 // no room outside: anywhere, and rely on retries
}

func bootRabbitNode(sbin string) (*rabbitNode, error) {
	dir, err := os.MkdirTemp("", "steadfast-rabbit-")
	if err != nil {
		return nil, err
	}
	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	ctlBase, err := freeRange(5)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	amqpPort, distPort, epmdPort := ports[0], ports[1], ports[2]
	n := &rabbitNode{
		name:     "sf" + randomSuffix() + "@localhost",
		url:      fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", amqpPort),
		dir:      dir,
		sbin:     sbin,
		exited:   make(chan struct{}),
		epmdPort: epmdPort,
	}
	home := filepath.Join(dir, "home")
	for _, d := range []string{home, "mnesia", "log", "plugins-expand"} {
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	files := map[string]string{
		filepath.Join(home, ".erlang.cookie"):   strings.ToUpper(randomSuffix() + randomSuffix() + randomSuffix()),
		filepath.Join(dir, "rabbitmq-env.conf"): "# private test node\n",
		filepath.Join(dir, "rabbitmq.conf"): "loopback_users.guest = true\nlog.console = false\n" +
			"log.file.level = info\ndisk_free_limit.absolute = 50MB\n",
		filepath.Join(dir, "enabled_plugins"): "[].\n",
	}
	for path, content := range files {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	n.env = append(os.Environ(),
		"HOME="+home,
		"RABBITMQ_NODENAME="+n.name,
		"RABBITMQ_USE_LONGNAME=false",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(amqpPort),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(distPort),
		"ERL_EPMD_PORT="+strconv.Itoa(epmdPort),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"RABBITMQ_CTL_DIST_PORT_MIN="+strconv.Itoa(ctlBase),
		"RABBITMQ_CTL_DIST_PORT_MAX="+strconv.Itoa(ctlBase+4),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_PLUGINS_EXPAND_DIR="+filepath.Join(dir, "plugins-expand"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_LOGS="+filepath.Join(dir, "log", "rabbit.log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "rabbitmq.pid"),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
	logf, err := os.Create(filepath.Join(dir, "log", "startup.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	n.cmd = exec.Command(filepath.Join(sbin, "rabbitmq-server"))
	n.cmd.Dir = dir
	n.cmd.Env = n.env
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	if err := n.cmd.Start(); err != nil {
		logf.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start rabbitmq-server: %w", err)
	}
	go func() {
		_ = n.cmd.Wait()
		logf.Close()
		close(n.exited)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := n.await(ctx); err != nil {
		return n, fmt.Errorf("node %s did not boot: %w\n%s", n.name, err, n.logTail())
	}
	return n, nil
}

func (n *rabbitNode) ctl(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(n.sbin, "rabbitmqctl"), append([]string{"-n", n.name}, args...)...)
	cmd.Env = n.env
	cmd.Dir = n.dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// await retries `rabbitmqctl await_startup` (it fails at once while the
// node is not reachable yet), then dials AMQP until a connection opens.
func (n *rabbitNode) await(ctx context.Context) error {
	var err error
	for {
		select {
		case <-n.exited:
			return errors.New("the node exited")
		default:
		}
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = n.ctl(actx, "await_startup", "--timeout", "20")
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	for {
		conn, err := amqp.DialConfig(n.url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
		if err == nil {
			return conn.Close()
		}
		if ctx.Err() != nil {
			return fmt.Errorf("node started but AMQP connections fail: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (n *rabbitNode) restart(ctx context.Context) error {
	if err := n.ctl(ctx, "stop_app"); err != nil {
		_ = n.ctl(ctx, "start_app")
		return err
	}
	if err := n.ctl(ctx, "start_app"); err != nil {
		return err
	}
	return n.await(ctx)
}

func (n *rabbitNode) stop() error {
	var errs []error
	select {
	case <-n.exited:
	default:
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := n.ctl(ctx, "shutdown"); err != nil {
			errs = append(errs, err)
		}
		cancel()
		select {
		case <-n.exited:
		case <-time.After(20 * time.Second):
			errs = append(errs, fmt.Errorf("node %s still running after shutdown, killing it", n.name))
			_ = n.cmd.Process.Kill()
			<-n.exited
		}
	}
	// The node started its own epmd on a port of its own: stop that too.
	if epmd, err := exec.LookPath("epmd"); err == nil {
		cmd := exec.Command(epmd, "-kill")
		cmd.Env = append(os.Environ(), "ERL_EPMD_PORT="+strconv.Itoa(n.epmdPort))
		_ = cmd.Run()
	}
	if err := os.RemoveAll(n.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// portClash reports whether the node's logs say a port it was to listen on
// was taken.
func (n *rabbitNode) portClash() bool {
	for _, f := range []string{"startup.log", "rabbit.log"} {
		if data, err := os.ReadFile(filepath.Join(n.dir, "log", f)); err == nil && bytes.Contains(data, []byte("eaddrinuse")) {
			return true
		}
	}
	return false
}

func (n *rabbitNode) logTail() string {
	var b strings.Builder
	for _, f := range []string{"startup.log", "rabbit.log"} {
		data, err := os.ReadFile(filepath.Join(n.dir, "log", f))
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		fmt.Fprintf(&b, "----- %s -----\n%s\n", f, strings.Join(lines, "\n"))
	}
	return b.String()
}
