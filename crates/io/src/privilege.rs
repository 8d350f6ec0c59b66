//! Least privilege: a process that parses packets from the network keeps no more power than it
//! still needs once its captures and raw sockets are open.
//!
//! * [`init`], at start: where this process holds `CAP_NET_ADMIN` (root, or the file
//!   capabilities of `setcap cap_net_raw,cap_net_admin+ep`), it is also made *ambient*, so
//!   that the `nft` processes that install and update the shield's and the reverse server's
//!   nftables tables get it: file capabilities are not inherited across `execve` otherwise
//!   (capabilities(7), "Transformation of capabilities during execve()"), and `nft` run by a
//!   user with the tool's file capabilities failed with "Operation not permitted".
//! * [`setup_done`], called by the run loop once the first run's captures and sockets are open
//!   (later calls do nothing): when started as root and given a user, the process switches to
//!   it (supplementary groups dropped, then group, then user, with `PR_SET_KEEPCAPS` so the
//!   capabilities kept survive the change of user); then every capability but those the
//!   [`Privileges`] keep is dropped from the permitted set for good: `CAP_NET_RAW` only where
//!   the run opens captures or raw sockets later (the monitor's fast lane, a discovery or a way
//!   back started per flow, the runs of `compare` and `--two-way`), `CAP_NET_ADMIN` only where
//!   an nftables table must still be updated or removed (the UDP shield, the reverse server's
//!   table), and only that one stays ambient.
//!
//! Capabilities belong to each thread (capset(2) changes only the caller's), while the user
//! of every thread changes together (glibc broadcasts `setuid`). So [`init`] runs before any
//! thread exists and sets `PR_SET_KEEPCAPS` when a user switch will come (every thread then
//! keeps its permitted set through the switch, effective emptied), and each thread settles
//! its own: the run loop's in [`setup_done`]; a helper thread that needs nothing
//! ([`drop_all_in_thread`]: the reverse-DNS workers, the output watcher) at its start; one
//! that opens sockets later (the printers of `--multipath` and `--reverse`) with
//! [`sync_thread`] before each piece of work and while it waits, to what the run loop kept.
//!
//! Capabilities are read and set with the `caps` crate, users looked up and switched with
//! `nix`.

use std::sync::Mutex;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid};

use crate::Error;

/// What a process keeps once its first run is set up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Privileges {
    /// When started as root: the user to run as once set up (`None`: stay root, with only
    /// the capabilities kept).
    pub user: Option<String>,
    /// Keep `CAP_NET_RAW`: captures or raw sockets are opened after the first run's.
    pub keep_raw: bool,
    /// Keep `CAP_NET_ADMIN`: an nftables table is updated or removed later.
    pub keep_admin: bool,
}

/// What [`init`] left for [`setup_done`]: the privileges, and the ids of the user to switch to.
type Pending = (Privileges, Option<(Uid, Gid)>);
static PENDING: Mutex<Option<Pending>> = Mutex::new(None);

/// A switch of user is to come or under way (set by [`init`], cleared once it is done).
static SWITCHING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What the threads settle to, once [`setup_done`] ran: (kept, ambient).
static SETTLED: Mutex<Option<(CapsHashSet, CapsHashSet)>> = Mutex::new(None);

std::thread_local! {
    static THREAD_SETTLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the process runs as root (effective user 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// At start (see the module doc): checks that the user to switch to exists, lets `nft`
/// children have `CAP_NET_ADMIN`, and remembers what to keep for [`setup_done`].
pub fn init(p: Privileges) -> Result<(), Error> {
    // Looked up once, here: a second lookup at the switch would read the user database again
    // (NSS: nsswitch.conf, passwd), part of every one-destination trace's start-up.
    let mut ids = None;
    if let (Some(name), true) = (&p.user, is_root()) {
        let user = lookup(name)?;
        ids = Some((user.uid, user.gid));
        // Every thread created from now on inherits it (see the module doc).
        caps::securebits::set_keepcaps(true)
            .map_err(|e| Error::Unsupported(format!("keeping capabilities: {e}")))?;
        SWITCHING.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    if caps::has_cap(None, CapSet::Permitted, Capability::CAP_NET_ADMIN).unwrap_or(false) {
        // Inheritable first: an ambient capability must be permitted and inheritable.
        let _ = caps::raise(None, CapSet::Effective, Capability::CAP_NET_ADMIN);
        let _ = caps::raise(None, CapSet::Inheritable, Capability::CAP_NET_ADMIN);
        let _ = caps::raise(None, CapSet::Ambient, Capability::CAP_NET_ADMIN);
    }
    if let Ok(mut pending) = PENDING.lock() {
        *pending = Some((p, ids));
    }
    Ok(())
}

fn lookup(name: &str) -> Result<nix::unistd::User, Error> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(Error::Unsupported(format!(
            "no user {name:?} to run as (pass --user with an existing unprivileged user)"
        ))),
        Err(e) => Err(Error::Unsupported(format!("looking up user {name:?}: {e}"))),
    }
}

/// Once the first run's captures and sockets are open: switch user and drop capabilities
/// (see the module doc). Does nothing after the first call, or without [`init`].
pub(crate) fn setup_done() -> Result<(), Error> {
    let Some((p, ids)) = PENDING.lock().ok().and_then(|mut g| g.take()) else {
        return Ok(());
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::Unsupported(format!("dropping privileges: {what}: {e}"))
    };
    if let (Some((uid, gid)), true) = (ids, is_root()) {
        caps::securebits::set_keepcaps(true).map_err(|e| fail("keep capabilities", &e))?;
        nix::unistd::setgroups(&[]).map_err(|e| fail("supplementary groups", &e))?;
        nix::unistd::setgid(gid).map_err(|e| fail("group", &e))?;
        nix::unistd::setuid(uid).map_err(|e| fail("user", &e))?;
        caps::securebits::set_keepcaps(false).map_err(|e| fail("keep capabilities", &e))?;
        SWITCHING.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    let mut keep = CapsHashSet::new();
    let mut admin = CapsHashSet::new();
    if p.keep_raw {
        keep.insert(Capability::CAP_NET_RAW);
    }
    if p.keep_admin {
        keep.insert(Capability::CAP_NET_ADMIN);
        admin.insert(Capability::CAP_NET_ADMIN);
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| fail("read", &e))?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    let admin: CapsHashSet = admin.intersection(&permitted).copied().collect();
    settle(&keep, &admin).map_err(|e| fail("capabilities", &e))?;
    if let Ok(mut s) = SETTLED.lock() {
        *s = Some((keep, admin));
    }
    Ok(())
}

/// This thread's capabilities: `keep` permitted and effective, `ambient` inheritable and
/// ambient, nothing else; `PR_SET_KEEPCAPS` off.
fn settle(keep: &CapsHashSet, ambient: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    let keep: CapsHashSet = keep
        .intersection(&caps::read(None, CapSet::Permitted)?)
        .copied()
        .collect();
    // Effective first (it must stay within permitted), permitted last (for good).
    caps::set(None, CapSet::Effective, &keep)?;
    let ambient: CapsHashSet = ambient.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Inheritable, &ambient)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    caps::clear(None, CapSet::Ambient)?;
    for c in &ambient {
        caps::raise(None, CapSet::Ambient, *c)?;
    }
    let _ = caps::securebits::set_keepcaps(false);
    THREAD_SETTLED.with(|t| t.set(true));
    Ok(())
}

/// A helper thread that needs no privilege: every capability of this thread dropped. While
/// a switch of user is still to come, `CAP_SETUID` and `CAP_SETGID` stay: glibc makes every
/// thread change user together and aborts the process if one cannot; without
/// `PR_SET_KEEPCAPS` in this thread, the switch then clears those two as well.
pub fn drop_all_in_thread() {
    // Not from PENDING: setup_done takes it before the switch, which may still be under way.
    let switching = SWITCHING.load(std::sync::atomic::Ordering::SeqCst);
    let mut keep = CapsHashSet::new();
    if switching {
        keep.insert(Capability::CAP_SETUID);
        keep.insert(Capability::CAP_SETGID);
    }
    let _ = settle(&keep, &CapsHashSet::new());
}

/// A helper thread that may open sockets later: once the run loop has settled (see
/// [`setup_done`]), this thread keeps what it kept, no more. Cheap after the first time.
pub fn sync_thread() {
    if THREAD_SETTLED.with(std::cell::Cell::get) {
        return;
    }
    let target = SETTLED.lock().ok().and_then(|s| s.clone());
    if let Some((keep, ambient)) = target {
        let _ = settle(&keep, &ambient);
    }
}
