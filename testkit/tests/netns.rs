//! The network layer itself (`testkit::netns`): hosts talk, a partition
//! stops them and a heal lets them talk again, a one-way cut blocks one
//! direction only, a slowed link carries no more than its rate, the test's own code and programs run on a host, the
//! relay reaches the root namespace and can be cut, and nothing is left
//! behind. Needs root, as CI runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use testkit::netns::{Net, GATEWAY};

/// Whether a TCP connection from host `from` to `to_addr` is accepted
/// within `limit` (a partitioned peer never answers: the attempt times
/// out, it is not refused).
fn connects(net: &Net, from: &str, to_addr: SocketAddr, limit: Duration) -> bool {
    net.host(from).run_on_thread(move || TcpStream::connect_timeout(&to_addr, limit).is_ok()).join().expect("thread")
}

/// A TCP listener on `host` at `port` that accepts forever and hands
/// each connection to `serve`.
fn serve_on(net: &Net, host: &str, port: u16, serve: impl Fn(TcpStream) + Send + 'static) -> SocketAddr {
    let addr = SocketAddr::from((net.host(host).ip(), port));
    let listener = net
        .host(host)
        .run_on_thread(move || TcpListener::bind(addr).expect("bind on the host"))
        .join()
        .expect("thread");
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            serve(s);
        }
    });
    addr
}

/// A listener on `host` at `port` answering each connection with `hello`.
fn listen(net: &Net, host: &str, port: u16) -> SocketAddr {
    serve_on(net, host, port, |mut s| {
        let _ = s.write_all(b"hello");
    })
}

/// Whether a datagram sent from `from` reaches `to` within 1 s.
fn datagram_arrives(net: &Net, from: &str, to: &str) -> bool {
    let to_addr = SocketAddr::from((net.host(to).ip(), 9999));
    let receiver = net
        .host(to)
        .run_on_thread(move || {
            let s = UdpSocket::bind(to_addr).expect("bind");
            s.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
            s
        })
        .join()
        .expect("thread");
    net.host(from)
        .run_on_thread(move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.send_to(b"ping", to_addr).expect("send");
        })
        .join()
        .expect("thread");
    let mut buf = [0u8; 16];
    receiver.recv_from(&mut buf).is_ok()
}

/// A server on `host` at `port` that, for each connection, reads what the
/// client sends until it shuts its side, then answers with `answer` bytes.
fn serve_bulk(net: &Net, host: &str, port: u16, answer: usize) -> SocketAddr {
    serve_on(net, host, port, move |mut s| {
        let _ = std::io::copy(&mut s, &mut std::io::sink());
        let _ = s.write_all(&vec![7u8; answer]);
    })
}

/// How long host `from` takes to send `upload` bytes to `to` and read the
/// whole answer.
fn exchange(net: &Net, from: &str, to: SocketAddr, upload: usize) -> Duration {
    net.host(from)
        .run_on_thread(move || {
            let started = std::time::Instant::now();
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect");
            s.write_all(&vec![1u8; upload]).expect("send");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).expect("read");
            started.elapsed()
        })
        .join()
        .expect("thread")
}

#[test]
fn a_slowed_link_carries_no_more_than_its_rate_each_way_and_a_heal_restores_it() {
    let net = Net::create();
    net.add_host("a");
    net.add_host("b");
    net.add_host("c");
    const BULK: usize = 32 * 1024;
    let to_a = serve_bulk(&net, "b", 7000, BULK);
    let from_a = serve_bulk(&net, "b", 7001, 0);
    let healthy = exchange(&net, "a", to_a, 0);
    assert!(healthy < Duration::from_millis(500), "{BULK} bytes took {healthy:?} on a healthy link");

    // 128 kbit/s is 16 KB/s: 32 KiB takes 2 s, whichever way it goes.
    net.slow("b", 128);
    let down = exchange(&net, "a", to_a, 0);
    let up = exchange(&net, "a", from_a, BULK);
    for (way, took) in [("from b", down), ("to b", up)] {
        assert!(took >= Duration::from_millis(1500), "{BULK} bytes {way} took {took:?} on a 128 kbit/s link");
        assert!(took < Duration::from_secs(10), "{BULK} bytes {way} took {took:?}: stalled, not slowed");
    }
    // Only b's link: a and c still talk at full speed.
    let elsewhere = serve_bulk(&net, "c", 7000, BULK);
    assert!(exchange(&net, "a", elsewhere, 0) < Duration::from_millis(500), "a host not slowed was slowed");

    net.heal();
    let healed = exchange(&net, "a", to_a, 0);
    assert!(healed < Duration::from_millis(500), "{BULK} bytes took {healed:?} after the heal");
}

#[test]
fn a_partition_stops_traffic_and_a_heal_restores_it() {
    let net = Net::create();
    for h in ["a", "b", "c"] {
        net.add_host(h);
    }
    let b = listen(&net, "b", 7000);
    let c = listen(&net, "c", 7000);
    assert!(connects(&net, "a", b, Duration::from_secs(2)), "a cannot reach b on a healthy network");
    assert!(connects(&net, "a", c, Duration::from_secs(2)));

    net.partition(&[&["a"], &["b", "c"]]);
    assert!(!connects(&net, "a", b, Duration::from_secs(1)), "a reaches b across the partition");
    assert!(!connects(&net, "a", c, Duration::from_secs(1)), "a reaches c across the partition");
    assert!(connects(&net, "b", c, Duration::from_secs(2)), "b and c, on one side, cannot talk");
    // Silent: the attempt times out, it is not refused by a reset.
    let started = std::time::Instant::now();
    let err = net
        .host("a")
        .run_on_thread(move || TcpStream::connect_timeout(&b, Duration::from_millis(800)).expect_err("partitioned"))
        .join()
        .expect("thread");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "not silent: {err}");
    assert!(started.elapsed() >= Duration::from_millis(700));

    net.heal();
    assert!(connects(&net, "a", b, Duration::from_secs(2)), "a cannot reach b after the heal");
    assert!(connects(&net, "a", c, Duration::from_secs(2)));
}

#[test]
fn a_one_way_cut_blocks_one_direction_only() {
    let net = Net::create();
    net.add_host("a");
    net.add_host("b");
    assert!(datagram_arrives(&net, "a", "b"));
    assert!(datagram_arrives(&net, "b", "a"));
    net.cut_one_way("a", "b");
    assert!(!datagram_arrives(&net, "a", "b"), "a datagram crossed the cut's direction");
    assert!(datagram_arrives(&net, "b", "a"), "the cut blocked the other direction too");
    net.heal();
    assert!(datagram_arrives(&net, "a", "b"));
}

#[test]
fn an_isolated_host_reaches_nobody() {
    let net = Net::create();
    for h in ["a", "b", "c"] {
        net.add_host(h);
    }
    let a = listen(&net, "a", 7000);
    let b = listen(&net, "b", 7000);
    net.isolate("a");
    assert!(!connects(&net, "a", b, Duration::from_secs(1)));
    assert!(!connects(&net, "c", a, Duration::from_secs(1)));
    assert!(TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_err(), "the root namespace reaches it");
    assert!(connects(&net, "c", b, Duration::from_secs(2)), "the others were cut too");
    net.heal();
    assert!(TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
}

#[test]
fn a_program_runs_on_its_host_under_its_own_pid() {
    let net = Net::create();
    let host = net.add_host("a");
    let mut child = net.command("a", "sleep").arg("30").spawn().expect("spawn");
    // `ip netns exec` execs: the pid we hold is sleep's, in the host.
    std::thread::sleep(Duration::from_millis(300));
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).expect("comm");
    assert_eq!(comm.trim(), "sleep");
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", child.id())).expect("its namespace");
    let hosts = host.run_on_thread(|| std::fs::read_link("/proc/thread-self/ns/net").expect("ns")).join().expect("t");
    assert_eq!(theirs, hosts, "the program does not run in the host's namespace");
    let ours = std::fs::read_link("/proc/thread-self/ns/net").expect("ns");
    assert_ne!(theirs, ours);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn dropping_the_network_leaves_nothing_behind() {
    let namespaces = || -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let mut orphan;
    let (hosts, gateway) = {
        let net = Net::create();
        net.add_host("x");
        net.add_host("y");
        // Something still running on a host when the network drops.
        orphan = net.command("x", "sleep").arg("60").spawn().expect("spawn");
        let mine = format!("zkt{:x}x", std::process::id());
        let ours: Vec<String> = namespaces()
            .into_iter()
            .filter(|n| n.starts_with(&mine) && (n.ends_with("-x") || n.ends_with("-y")))
            .collect();
        assert!(ours.len() >= 2, "the hosts' namespaces are not there: {ours:?}");
        // Running *on the host* first: `ip netns exec` enters the namespace,
        // then execs. Dropped before it enters, the program never runs
        // there at all (and iproute2 then exits 0, which would read as
        // "not killed").
        let x = ours.iter().find(|n| n.ends_with("-x")).expect("host x's namespace").clone();
        let pid = orphan.id().to_string();
        let inside = || {
            let out = std::process::Command::new("ip").args(["netns", "pids", &x]).output().expect("ip netns pids");
            String::from_utf8_lossy(&out.stdout).split_whitespace().any(|p| p == pid)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !inside() {
            assert!(std::time::Instant::now() < deadline, "the program never entered host x");
            std::thread::sleep(Duration::from_millis(10));
        }
        (ours, net.gateway())
    };
    // Killed with the network: reaped at once.
    let status = orphan.wait().expect("wait");
    assert!(!status.success(), "what ran on the host was not killed: {status:?}");
    let left: Vec<String> = namespaces().into_iter().filter(|n| hosts.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let out = std::process::Command::new("ip").args(["-4", "-o", "addr"]).output().expect("ip");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&gateway.to_string()), "the gateway link is left behind");

    // And after a panic.
    let unwound = std::panic::catch_unwind(|| {
        let net = Net::create();
        net.add_host("z");
        panic!("a test fails");
    });
    assert!(unwound.is_err());
    let ours = format!("zkt{:x}x", std::process::id());
    assert!(!namespaces().iter().any(|n| n.ends_with("-z") && n.starts_with(&ours)), "left behind by a panic");
}

#[test]
fn a_stale_network_of_a_killed_run_is_removed() {
    // A namespace named as a process that no longer exists names it.
    let dead = (1u32 << 22) + 7; // above any pid_max this kernel allows
    assert!(!std::path::Path::new(&format!("/proc/{dead}")).exists());
    let stale = format!("zkt{dead:x}x0-zk1");
    let made = std::process::Command::new("ip").args(["netns", "add", &stale]).status().expect("ip");
    assert!(made.success());
    let _net = Net::create();
    assert!(!std::path::Path::new("/run/netns").join(&stale).exists(), "the stale namespace is still there");
}

#[test]
fn the_relay_reaches_the_root_namespace_and_can_be_cut() {
    let net = Net::create();
    net.add_host("a");
    // A service only the root namespace's loopback serves.
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_addr = upstream.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in upstream.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let relay = net.relay(up_addr);
    assert_eq!(relay.addr().ip(), std::net::IpAddr::V4(net.gateway()));
    let target = relay.addr();
    let mut s = net
        .host("a")
        .run_on_thread(move || TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("through the relay"))
        .join()
        .expect("thread");
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let echo = |s: &mut TcpStream, msg: &[u8]| -> Option<Vec<u8>> {
        s.write_all(msg).ok()?;
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).ok()?;
        Some(buf)
    };
    assert_eq!(echo(&mut s, b"one").as_deref(), Some(&b"one"[..]));
    relay.cut();
    s.set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
    assert_eq!(echo(&mut s, b"two"), None, "bytes crossed a cut relay");
    relay.heal();
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    // What waited in the cut is delivered after it.
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).expect("the held bytes, after the heal");
    assert_eq!(&buf, b"two");
    // A partition naming the gateway cuts a host from the relay too.
    net.partition(&[&[GATEWAY], &["a"]]);
    s.set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
    assert_eq!(echo(&mut s, b"three"), None);
    net.heal();
}

#[test]
fn a_runtime_on_a_host_opens_its_sockets_there() {
    let net = Net::create();
    let a = net.add_host("a");
    net.add_host("b");
    let b = listen(&net, "b", 7001);
    let rt = a.runtime();
    let local = std::thread::spawn(move || {
        let main = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        main.block_on(async move {
            rt.spawn(async move {
                let s = tokio::net::TcpStream::connect(b).await.expect("connect from the host");
                s.local_addr().expect("local").ip()
            })
            .await
            .expect("task")
        })
    })
    .join()
    .expect("thread");
    assert_eq!(local, std::net::IpAddr::V4(a.ip()), "the socket was not opened on the host");
}
