//! Steering against the real kernel: groups, programs and slots on loopback.
//! docs/steering.md records what these measured.

use super::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::Instant;

const WAIT: Duration = Duration::from_secs(5);

fn root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root (CI runs as root)");
    }
    eprintln!("{test}: NOT RUN: needs root");
    false
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A port free on every address (found by binding the wildcard to port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` members on a free port of `ip`, owned by `owner`, non-blocking so the
/// tests can count what each got. Each binds the port by number, as relaunch
/// does: a socket bound to port 0 gives its port up at shutdown() and a
/// listen() after that picks another.
fn group(ip: Ipv4Addr, n: usize, owner: Option<u32>) -> (u16, Vec<Socket>) {
    let port = free_port();
    let all: Vec<Socket> = (0..n)
        .map(|_| member(SocketAddr::from((ip, port)), owner, 4096).unwrap())
        .collect();
    for s in &all {
        s.set_nonblocking(true).unwrap();
    }
    (port, all)
}

fn connect(to: SocketAddr) -> TcpStream {
    let c = TcpStream::connect_timeout(&to, WAIT).unwrap();
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    c
}

/// Steers everything to `route` but connects from `port` (a probe's) to
/// `slot`, through member `via`.
fn route_probe(via: &Socket, route: u32, port: u16, slot: u32) {
    attach(via, &program(Route::To(route), Some(Probe { port, slot }))).unwrap();
}

/// Accepts from every member until `total` connections arrived (or the
/// deadline), then sweeps once more: how many each member got.
fn landed(members: &[&Socket], total: usize) -> Vec<usize> {
    let mut got = vec![0; members.len()];
    let deadline = Instant::now() + WAIT;
    loop {
        for (i, m) in members.iter().enumerate() {
            while let Ok((c, _)) = m.accept() {
                c.set_linger(Some(Duration::ZERO)).unwrap();
                got[i] += 1;
            }
        }
        if got.iter().sum::<usize>() >= total || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `n` connects to `to`, then where they landed.
fn spread(to: SocketAddr, members: &[&Socket], n: usize) -> Vec<usize> {
    let clients: Vec<TcpStream> = (0..n).map(|_| connect(to)).collect();
    let got = landed(members, n);
    drop(clients);
    got
}

/// A uid for the group: the default rule, on this machine.
fn owner() -> u32 {
    choose_owner(OWNER_RANGE, &busy_uids().unwrap()).expect("a free uid in the owner range")
}

/// The fsuid of the calling thread, as /proc shows it.
fn thread_fsuid() -> u32 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    crate::proc::status_uids(&status)[3]
}

// ---------------------------------------------------------------- slots --

#[test]
fn a_member_leaving_gets_the_last_member_moved_into_its_slot() {
    let mut s = Slots::new();
    assert_eq!([s.listened(10), s.listened(11), s.listened(12)], [0, 1, 2]);
    assert_eq!(s.left(10), Some((12, 0)));
    assert_eq!(
        (s.slot(12), s.slot(11), s.slot(10)),
        (Some(0), Some(1), None)
    );
    // The last one leaving moves nothing.
    assert_eq!(s.left(11), None);
    assert_eq!(s.len(), 1);
    // A re-listen (after shutdown) goes last.
    assert_eq!(s.listened(10), 1);
    assert_eq!(s.left(99), None, "an unknown member changes nothing");
    assert_eq!((s.slot(12), s.slot(10)), (Some(0), Some(1)));
    assert_eq!((s.would_move(12), s.would_move(10)), (Some(10), None));
    assert_eq!(s.left(12), Some((10, 0)));
    assert_eq!(s.would_move(10), None);
    assert_eq!(s.left(10), None);
    assert!(s.is_empty());
}

#[test]
fn shares_of_none_or_all_need_no_random_draw() {
    let none = program(
        Route::Share {
            serving: 0,
            canary: 1,
            share: 0.0,
        },
        None,
    );
    let all = program(
        Route::Share {
            serving: 0,
            canary: 1,
            share: 1.5,
        },
        None,
    );
    assert_eq!((none.len(), none[0].code, none[0].k), (1, RET | K, 0));
    assert_eq!((all.len(), all[0].code, all[0].k), (1, RET | K, 1));
    let tenth = program(
        Route::Share {
            serving: 0,
            canary: 1,
            share: 0.1,
        },
        None,
    );
    assert_eq!(tenth[1].k, 429_496_730, "10% of 2^32, rounded");
}

#[test]
fn owner_uids_skip_every_uid_in_use() {
    let busy: HashSet<u32> = [60578, 60579].into();
    assert_eq!(choose_owner(60578..=60600, &busy), Some(60580));
    assert_eq!(choose_owner(60578..=60579, &busy), None);
    assert_eq!(
        crate::proc::status_uids("Name:\tx\nUid:\t0\t1000\t1001\t1002\nGid:\t0\t0\t0\t0\n"),
        [0, 1000, 1001, 1002]
    );
    // What this machine runs as is busy.
    let busy = busy_uids().unwrap();
    assert!(busy.contains(&nix::unistd::geteuid().as_raw()));
}

// ------------------------------------------------------------ ownership --

#[test]
fn setfsuid_changes_only_the_calling_thread_and_is_restored() {
    if !root("setfsuid_changes_only_the_calling_thread_and_is_restored") {
        return;
    }
    let uid = owner();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        rx.recv().unwrap();
        seen_tx.send(thread_fsuid()).unwrap();
    });
    let during = as_fsuid(uid, || {
        tx.send(()).unwrap();
        // The other thread reads its own fsuid while ours is `uid`.
        (thread_fsuid(), seen_rx.recv_timeout(WAIT).unwrap())
    })
    .unwrap();
    other.join().unwrap();
    assert_eq!(during, (uid, 0), "(this thread, another thread) during");
    assert_eq!(thread_fsuid(), 0, "restored after");
    let sock = socket_as(Domain::IPV4, Some(uid)).unwrap();
    assert_eq!(owner_of(&sock).unwrap(), uid);
    assert_eq!(thread_fsuid(), 0);
}

/// Without CAP_SETUID (dropped from one thread's effective set: capabilities
/// are per thread too), setfsuid is refused without an error return: the
/// check catches it, and nothing is created.
#[test]
fn a_refused_setfsuid_is_an_error_and_creates_nothing() {
    if !root("a_refused_setfsuid_is_an_error_and_creates_nothing") {
        return;
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAP_SETUID: u32 = 7;
    let uid = owner();
    let (err, fsuid) = std::thread::spawn(move || {
        let mut h = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let mut d = [Data::default(); 2];
        // SAFETY: capget/capset read and write the header and two data
        // structs we own; pid 0 is this thread only.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
            d[0].effective &= !(1 << CAP_SETUID);
            assert_eq!(libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()), 0);
        }
        let made = socket_as(Domain::IPV4, Some(uid));
        (made.err().map(|e| e.kind()), thread_fsuid())
    })
    .join()
    .unwrap();
    assert_eq!(err, Some(io::ErrorKind::PermissionDenied));
    assert_eq!(fsuid, 0);
}

#[test]
fn members_made_as_the_owner_join_one_group() {
    if !root("members_made_as_the_owner_join_one_group") {
        return;
    }
    let uid = owner();
    let (port, members) = group(Ipv4Addr::UNSPECIFIED, 2, Some(uid));
    for m in &members {
        assert_eq!(owner_of(m).unwrap(), uid);
    }
    // Both really are in one group: steering reaches either.
    let refs: Vec<&Socket> = members.iter().collect();
    for slot in [0, 1] {
        attach(&members[0], &program(Route::To(slot), None)).unwrap();
        let got = spread(local(port), &refs, 20);
        assert_eq!(got[slot as usize], 20, "slot {slot}: {got:?}");
    }
}

/// Tries, in a forked child running as `uid`, to bind each address with
/// SO_REUSEPORT (and SO_REUSEADDR); for each: Ok, or the errno.
fn bind_as_process(uid: u32, addrs: &[SocketAddrV4; 2]) -> [Result<(), i32>; 2] {
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    // Everything the child needs, made before fork: it must not allocate.
    let raw: [libc::sockaddr_in; 2] = addrs.map(|a| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    });
    // SAFETY: the child only makes raw syscalls on memory prepared above,
    // then _exits: nothing that allocates, locks or unwinds.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => unsafe {
            if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(255);
            }
            let mut code = 0;
            for (i, sa) in raw.iter().enumerate() {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let one: libc::c_int = 1;
                let p = (&one as *const libc::c_int).cast();
                let n = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, p, n);
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, p, n);
                let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                let r = if libc::bind(fd, (sa as *const libc::sockaddr_in).cast(), len) == 0 {
                    0
                } else if *libc::__errno_location() == libc::EADDRINUSE {
                    1
                } else {
                    2
                };
                code |= r << (2 * i);
            }
            libc::_exit(code)
        },
        ForkResult::Parent { child } => {
            let WaitStatus::Exited(_, code) = waitpid(child, None).unwrap() else {
                panic!("the bind child did not exit");
            };
            assert_ne!(code, 255, "the child could not become uid {uid}");
            [0, 1].map(|i| match (code >> (2 * i)) & 3 {
                0 => Ok(()),
                1 => Err(libc::EADDRINUSE),
                _ => Err(-1),
            })
        }
    }
}

#[test]
fn other_uids_can_neither_join_nor_shadow_the_owners_group() {
    if !root("other_uids_can_neither_join_nor_shadow_the_owners_group") {
        return;
    }
    let (port, _members) = group(Ipv4Addr::UNSPECIFIED, 2, Some(owner()));
    let addrs = [
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
    ];
    let inuse = Err(libc::EADDRINUSE);
    // Root (the app under no --user) and nobody (an app under --user).
    for uid in [0, 65534] {
        assert_eq!(bind_as_process(uid, &addrs), [inuse, inuse], "uid {uid}");
    }
    // Nor a dual-stack IPv6 wildcard, from this (root) process.
    let v6 = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
    v6.set_only_v6(false).unwrap();
    v6.set_reuse_port(true).unwrap();
    let err = v6
        .bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
}

/// Where relaunch runs as the app's uid: the group is that uid's, and any
/// process of it can bind the specific address and take its traffic.
#[test]
fn a_group_of_the_apps_own_uid_can_be_shadowed_by_that_uid() {
    let (port, members) = group(Ipv4Addr::UNSPECIFIED, 1, None);
    let shadow = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    shadow.set_reuse_port(true).unwrap();
    shadow.bind(&local(port).into()).unwrap();
    shadow.listen(16).unwrap();
    shadow.set_nonblocking(true).unwrap();
    // Even joining the group itself works for the same uid.
    let joined = member(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), None, 16);
    assert!(joined.is_ok(), "{joined:?}");
    let got = spread(local(port), &[&members[0], &shadow], 5);
    assert_eq!(got, [0, 5], "the specific address takes every connection");
    // The check before a steering change sees both.
    let ours = [inode_of(&members[0]).unwrap()];
    let mut found = foreign_listeners(port, &ours).unwrap();
    found.sort();
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    assert_eq!(found, [any, local(port)]);
    drop((shadow, joined));
    assert_eq!(foreign_listeners(port, &ours).unwrap(), []);
}

/// Where relaunch runs as the app's uid (here 65534, as if both ran under
/// it): processes of that uid can join or shadow; others still cannot.
#[test]
fn only_the_groups_own_uid_can_join_or_shadow_it() {
    if !root("only_the_groups_own_uid_can_join_or_shadow_it") {
        return;
    }
    let (port, _members) = group(Ipv4Addr::UNSPECIFIED, 1, Some(65534));
    let addrs = [
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
    ];
    assert_eq!(bind_as_process(65534, &addrs), [Ok(()), Ok(())]);
    let inuse = Err(libc::EADDRINUSE);
    assert_eq!(bind_as_process(65533, &addrs), [inuse, inuse]);
}

/// SO_ATTACH_REUSEPORT_CBPF as nobody, on nobody's own listening member.
#[test]
fn attaching_a_program_needs_no_privilege() {
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    if !root("attaching_a_program_needs_no_privilege") {
        return;
    }
    // Made before fork: the child must not allocate.
    let prog = program(Route::To(0), Some(Probe { port: 1, slot: 0 }));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the child only makes raw syscalls on memory prepared above,
    // then _exits: nothing that allocates, locks or unwinds.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => unsafe {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(255);
            }
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let one: libc::c_int = 1;
            let n = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEPORT,
                (&one as *const libc::c_int).cast(),
                n,
            );
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len) != 0
                || libc::listen(fd, 8) != 0
            {
                libc::_exit(254);
            }
            let size = std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t;
            let p = (&fprog as *const libc::sock_fprog).cast();
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_REUSEPORT_CBPF,
                p,
                size,
            ) != 0
            {
                libc::_exit(*libc::__errno_location());
            }
            libc::_exit(0)
        },
        ForkResult::Parent { child } => {
            let status = waitpid(child, None).unwrap();
            assert_eq!(status, WaitStatus::Exited(child, 0), "0, or the errno");
        }
    }
}

// ------------------------------------------------------------- steering --

#[test]
fn steering_sends_every_connection_to_the_chosen_generation() {
    let (port, m) = group(Ipv4Addr::LOCALHOST, 2, None);
    let (a, b) = (&m[0], &m[1]);
    attach(a, &program(Route::To(1), None)).unwrap();
    assert_eq!(spread(local(port), &[a, b], 200), [0, 200]);
    attach(b, &program(Route::To(0), None)).unwrap();
    assert_eq!(spread(local(port), &[a, b], 200), [200, 0]);
}

#[test]
fn a_program_load_past_the_syn_faults_to_slot_zero() {
    // At selection the packet data is the SYN's empty payload: `ld [0]`
    // faults, and a faulting cBPF program returns 0, a real slot.
    let (port, m) = group(Ipv4Addr::LOCALHOST, 2, None);
    let faulting = [
        libc::sock_filter {
            code: LD | W | ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: RET | K,
            jt: 0,
            jf: 0,
            k: 1,
        },
    ];
    attach(&m[0], &faulting).unwrap();
    assert_eq!(spread(local(port), &[&m[0], &m[1]], 20), [20, 0]);
}

#[test]
fn an_out_of_range_slot_hashes_over_every_member_so_steer_refuses_it() {
    let (port, m) = group(Ipv4Addr::LOCALHOST, 2, None);
    attach(&m[0], &program(Route::To(2), None)).unwrap();
    let got = spread(local(port), &[&m[0], &m[1]], 200);
    assert!(got[0] > 0 && got[1] > 0, "{got:?}");
    let mut slots = Slots::new();
    for s in &m {
        slots.listened(inode_of(s).unwrap());
    }
    let share = |canary| Route::Share {
        serving: 0,
        canary,
        share: 0.1,
    };
    let far = Some(Probe { port: 1, slot: 2 });
    assert!(steer(&m[0], &slots, Route::To(2), None).is_err());
    assert!(steer(&m[0], &slots, share(2), None).is_err());
    assert!(steer(&m[0], &slots, Route::To(1), far).is_err());
    steer(&m[0], &slots, share(1), None).unwrap();
    steer(&m[0], &slots, Route::To(1), None).unwrap();
    assert_eq!(spread(local(port), &[&m[0], &m[1]], 20), [0, 20]);
}

#[test]
fn a_probe_from_the_reserved_port_reaches_its_slot_while_clients_follow_the_route() {
    let (port, m) = group(Ipv4Addr::UNSPECIFIED, 2, None);
    for ip in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)] {
        let to = SocketAddr::from((ip, port));
        let (probe, from) = probe_socket(to).unwrap();
        route_probe(&m[0], 0, from, 1);
        m[1].set_nonblocking(false).unwrap();
        assert!(verify(&m[1], probe, to, WAIT).unwrap(), "{ip}");
        m[1].set_nonblocking(true).unwrap();
        assert_eq!(spread(to, &[&m[0], &m[1]], 50), [50, 0], "{ip}");
    }
    // The source port alone is not enough: a connect from that port to
    // another local address (source != destination) follows the route.
    let (probe, from) = probe_socket(local(port)).unwrap();
    route_probe(&m[0], 0, from, 1);
    drop(probe);
    let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    c.bind(&SocketAddr::from((Ipv4Addr::new(127, 0, 0, 3), from)).into())
        .unwrap();
    c.connect(&local(port).into()).unwrap();
    assert_eq!(landed(&[&m[0], &m[1]], 1), [1, 0]);
    // And verify says so when a probe lands elsewhere.
    let (probe, from) = probe_socket(local(port)).unwrap();
    route_probe(&m[0], 0, from, 0);
    let short = Duration::from_millis(100);
    assert!(!verify(&m[1], probe, local(port), short).unwrap());
    assert_eq!(landed(&[&m[0], &m[1]], 1), [1, 0]);
}

/// A dual-stack group on [::] sees IPv4 SYNs with an IPv4 header: the
/// program reads either.
#[test]
fn a_probe_reaches_its_slot_in_a_dual_stack_group_over_either_family() {
    let port = free_port();
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let first = match member(any6, None, 64) {
        Ok(first) => first,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("IPv6 is required under CI=true: {e}")
        }
        Err(e) => {
            eprintln!("a_probe_reaches_its_slot_in_a_dual_stack_group: NOT RUN: no IPv6: {e}");
            return;
        }
    };
    let second = member(any6, None, 64).unwrap();
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    for to in [v6, local(port)] {
        for slot in [0, 1] {
            let (probe, from) = probe_socket(to).unwrap();
            route_probe(&first, 1 - slot, from, slot);
            let target = [&first, &second][slot as usize];
            assert!(verify(target, probe, to, WAIT).unwrap(), "{to} slot {slot}");
        }
    }
}

#[test]
fn slots_follow_the_kernel_when_members_close_or_shut_down() {
    let (port, m) = group(Ipv4Addr::LOCALHOST, 4, None);
    let mut m: Vec<Option<Socket>> = m.into_iter().map(Some).collect();
    let mut ids: Vec<u64> = m
        .iter()
        .map(|s| inode_of(s.as_ref().unwrap()).unwrap())
        .collect();
    let mut slots = Slots::new();
    for id in &ids {
        slots.listened(*id);
    }
    let to = local(port);
    // Close a middle member: the last moves into its slot (the others do
    // not shift down).
    m[1] = None;
    assert_eq!(slots.left(ids[1]), Some((ids[3], 1)));
    let check = |m: &[Option<Socket>], slots: &Slots, ids: &[u64]| {
        let live: Vec<(usize, &Socket)> = m
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_ref()?)))
            .collect();
        // Attach through a member: a socket out of the group would take the
        // program to a group of its own.
        let via = live.iter().find(|(i, _)| slots.slot(ids[*i]).is_some());
        let via = via.unwrap().1;
        for &(i, target) in &live {
            let Some(slot) = slots.slot(ids[i]) else {
                continue;
            };
            attach(via, &program(Route::To(slot), None)).unwrap();
            let socks: Vec<&Socket> = live.iter().map(|(_, s)| *s).collect();
            let got = spread(to, &socks, 20);
            let want: Vec<usize> = live
                .iter()
                .map(|(j, _)| if *j == i { 20 } else { 0 })
                .collect();
            assert_eq!(got, want, "member {i} at slot {slot}");
            // And the probe agrees.
            let (probe, from) = probe_socket(to).unwrap();
            route_probe(target, slot, from, slot);
            target.set_nonblocking(false).unwrap();
            assert!(verify(target, probe, to, WAIT).unwrap());
            target.set_nonblocking(true).unwrap();
        }
    };
    check(&m, &slots, &ids);
    // shutdown() of a listener leaves the group as close does; listen()
    // again rejoins it in the last slot, and a new member goes after it.
    let first = m[0].as_ref().unwrap();
    first.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(slots.left(ids[0]), Some((ids[2], 0)));
    assert_eq!(slots.slot(ids[3]), Some(1));
    check(&m, &slots, &ids);
    first.listen(64).unwrap();
    assert_eq!(slots.listened(ids[0]), 2);
    let fifth = member(to, None, 64).unwrap();
    fifth.set_nonblocking(true).unwrap();
    ids.push(inode_of(&fifth).unwrap());
    m.push(Some(fifth));
    assert_eq!(slots.listened(ids[4]), 3);
    check(&m, &slots, &ids);
}

/// Retiring the old generation's socket while the serving one is last would
/// move the serving one (here into slot 0, leaving the program's slot 2 out
/// of range: hashed over the old, the candidate and the serving). With a
/// spacer listening last, the spacer moves instead, and the attached program
/// stays right through the close with no re-attach, under connects from
/// another thread.
#[test]
fn a_spacer_keeps_the_serving_slot_still_when_an_older_member_closes() {
    let (port, mut m) = group(Ipv4Addr::LOCALHOST, 3, None);
    let mut slots = Slots::new();
    let ids: Vec<u64> = m.iter().map(|s| inode_of(s).unwrap()).collect();
    for id in &ids {
        slots.listened(*id);
    }
    // Old generation, candidate, serving generation.
    attach(&m[0], &program(Route::To(2), None)).unwrap();
    assert_eq!(slots.would_move(ids[0]), Some(ids[2]), "the serving one");
    let spacer = member(local(port), None, 64).unwrap();
    spacer.set_nonblocking(true).unwrap();
    let spacer_id = inode_of(&spacer).unwrap();
    slots.listened(spacer_id);
    assert_eq!(slots.would_move(ids[0]), Some(spacer_id));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let made = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut made = 0;
            // Nobody accepts: stay well under the serving member's backlog
            // (4096), or a fast machine overflows it and a connect times out.
            while (!stop.load(std::sync::atomic::Ordering::Relaxed) || made < 100) && made < 2000 {
                drop(connect(local(port)));
                made += 1;
            }
            made
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(m.remove(0));
        assert_eq!(slots.left(ids[0]), Some((spacer_id, 0)));
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap()
    });
    assert_eq!(slots.slot(ids[2]), Some(2), "serving never moved");
    assert_eq!(landed(&[&spacer, &m[0], &m[1]], made), [0, 0, made]);
}

/// The order after a restart: members given in another order, two closed
/// (so slots moved), clients queued on some, nobody accepting.
#[test]
fn the_slot_order_is_learned_back_from_the_kernel() {
    let (port, m) = group(Ipv4Addr::LOCALHOST, 5, None);
    let mut slots = Slots::new();
    for s in &m {
        slots.listened(inode_of(s).unwrap());
    }
    let mut m: Vec<Socket> = m;
    for i in [1, 0] {
        slots.left(inode_of(&m.remove(i)).unwrap());
    }
    route_probe(&m[0], slots.slot(inode_of(&m[1]).unwrap()).unwrap(), 1, 0);
    let _queued: Vec<TcpStream> = (0..3).map(|_| connect(local(port))).collect();
    let shuffled = [&m[2], &m[0], &m[1]];
    let learned = learn(&shuffled, local(port), WAIT).unwrap();
    assert_eq!(learned, slots);
    // Given a member that is not in the group, it says so.
    let stray = member(local(free_port()), None, 8).unwrap();
    let err = learn(
        &[&m[0], &m[1], &m[2], &stray],
        local(port),
        Duration::from_millis(200),
    );
    assert!(err.is_err(), "{err:?}");
}

// ---------------------------------------------------------------- drain --

#[test]
fn queued_connections_stay_with_the_old_socket_across_a_switch() {
    let (port, m) = group(Ipv4Addr::LOCALHOST, 2, None);
    let (old, new) = (&m[0], &m[1]);
    attach(old, &program(Route::To(0), None)).unwrap();
    let mut queued: Vec<TcpStream> = (0..20).map(|_| connect(local(port))).collect();
    for (i, c) in queued.iter_mut().enumerate() {
        c.write_all(&[i as u8]).unwrap();
    }
    let old_queue = || crate::proc::listen_queues().unwrap()[&inode_of(old).unwrap()].waiting;
    assert_eq!(old_queue(), 20);
    attach(old, &program(Route::To(1), None)).unwrap();
    assert_eq!(spread(local(port), &[new], 20), [20]);
    assert_eq!(old_queue(), 20, "the old queue neither grew nor lost any");
    // The old socket still accepts all 20, with their data.
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 20 && Instant::now() < deadline {
        match old.accept() {
            Ok((c, _)) => {
                c.set_nonblocking(false).unwrap();
                let mut b = [0u8];
                (&c).read_exact(&mut b).unwrap();
                (&c).write_all(&b).unwrap();
                seen.push(b[0]);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    seen.sort();
    assert_eq!(seen, (0..20).collect::<Vec<u8>>());
    for (i, c) in queued.iter_mut().enumerate() {
        let mut b = [0u8];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b[0], i as u8);
    }
}

/// TCP_DEFER_ACCEPT holds a handshake in SYN_RECV until data comes: a
/// handshake steered to the old socket before the switch that completes
/// after it.
#[test]
fn a_handshake_begun_before_the_switch_completes_on_the_old_socket() {
    let (port, m) = group(Ipv4Addr::LOCALHOST, 2, None);
    let (old, new) = (&m[0], &m[1]);
    let secs: libc::c_int = 10;
    // SAFETY: an int option, from a local, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            old.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    attach(old, &program(Route::To(0), None)).unwrap();
    let mut c = connect(local(port));
    // The kernel lists it as SYN_RECV on the held port until it completes.
    let syn_recv = || {
        crate::proc::tcp_sockets(1 << crate::proc::TCP_SYN_RECV)
            .unwrap()
            .iter()
            .filter(|e| e.local.port() == port)
            .count()
    };
    assert_eq!(syn_recv(), 1);
    let queues = crate::proc::listen_queues().unwrap();
    let waiting = |s: &Socket| queues[&inode_of(s).unwrap()].waiting;
    assert_eq!((waiting(old), waiting(new)), (0, 0), "not complete yet");
    attach(old, &program(Route::To(1), None)).unwrap();
    c.write_all(b"x").unwrap();
    assert_eq!(landed(&[old, new], 1), [1, 0]);
    assert_eq!(syn_recv(), 0);
}

/// Runs `f` on a thread in a network namespace of its own (loopback up),
/// where a sysctl can be set without touching the machine's.
fn in_own_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare takes flags only; CLONE_NEWNET moves only this
            // thread (the namespace goes when its sockets and thread do).
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "{}",
                io::Error::last_os_error()
            );
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status();
            assert!(
                up.as_ref().is_ok_and(|s| s.success()),
                "ip link set lo up: {up:?}"
            );
            f()
        })
        .join()
        .unwrap()
    })
}

/// Closing a member with queued connections: reset without
/// tcp_migrate_req, moved to another member (by hash, not by the program)
/// with it. An empty-queue close resets nothing.
#[test]
fn closing_a_member_resets_its_queue_unless_tcp_migrate_req_moves_it() {
    if !root("closing_a_member_resets_its_queue_unless_tcp_migrate_req_moves_it") {
        return;
    }
    for migrate in [false, true] {
        let (moved, reset, survivor_got) = in_own_netns(|| {
            let sysctl = "/proc/sys/net/ipv4/tcp_migrate_req";
            std::fs::write(sysctl, if migrate { "1" } else { "0" }).unwrap();
            let (port, mut m) = group(Ipv4Addr::LOCALHOST, 2, None);
            attach(&m[0], &program(Route::To(0), None)).unwrap();
            // Accepted and in the app's hands: must survive any close.
            let mut live = connect(local(port));
            let (served, _) = loop {
                if let Ok(c) = m[0].accept() {
                    break c;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            let mut queued: Vec<TcpStream> = (0..5).map(|_| connect(local(port))).collect();
            let old = m.remove(0);
            // Wait until the 5 are in the old queue, then close it.
            let deadline = Instant::now() + WAIT;
            while crate::proc::listen_queues().unwrap()[&inode_of(&old).unwrap()].waiting < 5 {
                assert!(Instant::now() < deadline, "queue never filled");
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
            let mut reset = 0;
            for c in &mut queued {
                c.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut b = [0u8];
                if let Err(e) = c.read(&mut b)
                    && e.kind() == io::ErrorKind::ConnectionReset
                {
                    reset += 1;
                }
            }
            // Migration happens within close(): the queue is final by now.
            let survivor_got =
                crate::proc::listen_queues().unwrap()[&inode_of(&m[0]).unwrap()].waiting;
            // The accepted connection still works.
            live.write_all(b"k").unwrap();
            let mut b = [0u8];
            served.set_nonblocking(false).unwrap();
            (&served).read_exact(&mut b).unwrap();
            (migrate, reset, survivor_got)
        });
        if moved {
            assert_eq!((reset, survivor_got), (0, 5), "migrated");
        } else {
            assert_eq!((reset, survivor_got), (5, 0), "reset");
        }
    }
}

/// With syncookies sent (tcp_syncookies = 2, own namespace) there is no
/// SYN_RECV: the final ACK goes through the program again, and the
/// connection lands where the program sends the ACK. Without, where it sent
/// the SYN. The program: slot 0 for a SYN, slot 1 for anything else.
#[test]
fn under_syncookies_the_final_ack_is_steered_again() {
    if !root("under_syncookies_the_final_ack_is_steered_again") {
        return;
    }
    let syn_or_not = assemble(&[
        Op::Ins(LD | B | ABS, NET),
        Op::Ins(ALU | AND | K, 0x0f),
        Op::Ins(ALU | LSH | K, 2),
        Op::Ins(MISC | TAX, 0),
        Op::Ins(LD | B | IND, NET + 13),
        // SYN without ACK: 0x02 under the mask 0x12.
        Op::Ins(ALU | AND | K, 0x12),
        Op::Jmp(JMP | JEQ | K, 0x02, None, Some(1)),
        Op::Ins(RET | K, 0),
        Op::Label(1),
        Op::Ins(RET | K, 1),
    ]);
    for cookies in ["1", "2"] {
        let got = in_own_netns(|| {
            std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", cookies).unwrap();
            let (port, m) = group(Ipv4Addr::LOCALHOST, 2, None);
            attach(&m[0], &syn_or_not).unwrap();
            spread(local(port), &[&m[0], &m[1]], 20)
        });
        let want = if cookies == "2" { [0, 20] } else { [20, 0] };
        assert_eq!(got, want, "tcp_syncookies = {cookies}");
    }
}

#[test]
fn closing_an_empty_queue_member_resets_nothing() {
    let (port, mut m) = group(Ipv4Addr::LOCALHOST, 2, None);
    attach(&m[0], &program(Route::To(0), None)).unwrap();
    let clients: Vec<TcpStream> = (0..8).map(|_| connect(local(port))).collect();
    let mut served = Vec::new();
    while served.len() < 8 {
        if let Ok((c, _)) = m[0].accept() {
            c.set_nonblocking(false).unwrap();
            served.push(c);
        }
    }
    attach(&m[0], &program(Route::To(1), None)).unwrap();
    drop(m.remove(0));
    for (mut c, s) in clients.into_iter().zip(&served) {
        c.write_all(b"p").unwrap();
        let mut b = [0u8];
        let mut s = s;
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
        c.read_exact(&mut b).unwrap();
    }
    assert_eq!(spread(local(port), &[&m[0]], 8), [8]);
}

// --------------------------------------------------------------- canary --

#[test]
fn a_ten_percent_canary_gets_ten_percent_of_ten_thousand_connects() {
    let (port, m) = group(Ipv4Addr::LOCALHOST, 2, None);
    let share = Route::Share {
        serving: 0,
        canary: 1,
        share: 0.1,
    };
    attach(&m[0], &program(share, None)).unwrap();
    let mut got = [0, 0];
    for _ in 0..20 {
        let batch = spread(local(port), &[&m[0], &m[1]], 500);
        got[0] += batch[0];
        got[1] += batch[1];
    }
    eprintln!("canary share: {} of 10000", got[1]);
    assert_eq!(got[0] + got[1], 10_000);
    assert!(
        (700..=1300).contains(&got[1]),
        "canary got {} of 10000",
        got[1]
    );
}
