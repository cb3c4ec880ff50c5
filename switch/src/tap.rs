//! TAP device IO: the one module of this crate that touches the OS.
//!
//! A [`Tap`] is an open file descriptor on `/dev/net/tun` attached to a TAP
//! interface (`IFF_TAP | IFF_NO_PI`): every `read` returns one whole Ethernet
//! frame, every `write` sends one. The descriptor is non-blocking, so an empty
//! queue reads as [`io::ErrorKind::WouldBlock`]; the daemon waits for
//! readiness with its own poller (the fd is [`AsRawFd`]/[`AsFd`]).
//!
//! The interface is created in (or attached from) the network namespace of
//! the *calling thread*; once open, the descriptor keeps working from any
//! thread and any namespace. A persistent TAP ([`TapOptions::persist`])
//! outlives its descriptor, so a restarted daemon can attach again; clear
//! persistence with [`Tap::set_persist`] before dropping to delete it.
//!
//! The ioctls live in the private `sys` module, the only `unsafe` code in the
//! crate.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// The clone device every TAP is opened through.
const TUN_CLONE_DEVICE: &str = "/dev/net/tun";

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;

/// How to open a TAP device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapOptions {
    /// Keep the interface after the descriptor is closed (`TUNSETPERSIST 1`).
    pub persist: bool,
    /// Prefix every frame with a 10-byte `virtio_net_hdr` (`IFF_VNET_HDR`),
    /// in both directions; needed for offloads ([`Tap::set_offload`]).
    pub vnet_hdr: bool,
    /// One interface, several queues (`IFF_MULTI_QUEUE`): every `open` of
    /// the same name with this flag attaches one more descriptor (queue),
    /// and the kernel spreads the interface's flows over them.
    pub multi_queue: bool,
    /// Let this uid open the interface too (`TUNSETOWNER`).
    pub owner: Option<u32>,
}

/// An open TAP device: one Ethernet frame per `read` and per `write`.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    vnet_hdr: bool,
}

/// `TUNSETOFFLOAD` flags: what userspace accepts in frames *read* from the
/// TAP. With them the kernel hands over partial checksums and TCP/UDP
/// super-frames up to 64 KiB instead of segmenting them first.
pub mod offload {
    /// Partial checksums (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub const CSUM: u32 = 0x01;
    /// TCP over IPv4 segmentation.
    pub const TSO4: u32 = 0x02;
    /// TCP over IPv6 segmentation.
    pub const TSO6: u32 = 0x04;
    /// TSO with the ECN bit.
    pub const TSO_ECN: u32 = 0x08;
    /// UDP segmentation over IPv4 (Linux 6.2 and later).
    pub const USO4: u32 = 0x20;
    /// UDP segmentation over IPv6 (Linux 6.2 and later).
    pub const USO6: u32 = 0x40;
}

impl Tap {
    /// Open `/dev/net/tun` and attach to (or create) the TAP interface `name`
    /// (`IFF_TAP | IFF_NO_PI`, plus `IFF_VNET_HDR` when asked) in the calling
    /// thread's network namespace. The descriptor is non-blocking and
    /// close-on-exec. With [`TapOptions::persist`] the interface is made
    /// persistent (`TUNSETPERSIST 1`).
    ///
    /// Errors: `InvalidInput` for a name the kernel would refuse; the kernel's
    /// `EBUSY` when another descriptor already holds the interface, `EINVAL`
    /// when an interface of that name exists and is not a TAP, `EPERM`
    /// without `CAP_NET_ADMIN`.
    pub fn open(name: &str, opts: &TapOptions) -> io::Result<Tap> {
        validate_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_CLONE_DEVICE)?;
        let fd = OwnedFd::from(file);

        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if opts.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        if opts.multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        // The kernel may rewrite the name (it never does for a literal name,
        // but it is the authoritative one), so take it back from the ioctl.
        let name = sys::set_iff(fd.as_fd(), name, flags)?;
        let tap = Tap {
            fd,
            name,
            vnet_hdr: opts.vnet_hdr,
        };
        if let Some(uid) = opts.owner {
            sys::set_owner(tap.fd.as_fd(), uid)?;
        }
        if opts.persist {
            tap.set_persist(true)?;
        }
        Ok(tap)
    }

    /// The interface name, as the kernel reported it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one frame into `buf` and return its length. A frame longer than
    /// `buf` is truncated. `WouldBlock` when no frame is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        sys::read(self.fd.as_fd(), buf)
    }

    /// Write one whole frame. Fails with `EIO` while the interface is down.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        sys::write(self.fd.as_fd(), frame)
    }

    /// Write one frame gathered from several buffers (a `virtio_net_hdr`
    /// and the frame, say), with one syscall and no copy.
    pub fn write_vectored(&self, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
        sys::writev(self.fd.as_fd(), parts)
    }

    /// Another descriptor of the same queue (`dup`): frames written to
    /// either go out of the interface; only one of them should read.
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            fd: self.fd.try_clone()?,
            name: self.name.clone(),
            vnet_hdr: self.vnet_hdr,
        })
    }

    /// Whether every frame carries a `virtio_net_hdr` ([`TapOptions::vnet_hdr`]).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// `TUNSETOFFLOAD`: accept exactly these [`offload`] flags in frames
    /// read from the TAP. Needs [`TapOptions::vnet_hdr`]; `EINVAL` for a
    /// flag the kernel does not know.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        sys::set_offload(self.fd.as_fd(), flags)
    }

    /// Turn on every offload the datapath handles: checksum, TSO4/6 with
    /// ECN, and USO4/6 where the kernel has it (6.2+). Returns the flags
    /// set.
    pub fn enable_offloads(&self) -> io::Result<u32> {
        use offload::*;
        let base = CSUM | TSO4 | TSO6 | TSO_ECN;
        match self.set_offload(base | USO4 | USO6) {
            Ok(()) => Ok(base | USO4 | USO6),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.set_offload(base)?;
                Ok(base)
            }
            Err(e) => Err(e),
        }
    }

    /// Turn persistence on or off. A TAP that is not persistent disappears
    /// when its last descriptor closes, so clear it before dropping to delete
    /// the interface.
    pub fn set_persist(&self, on: bool) -> io::Result<()> {
        sys::set_persist(self.fd.as_fd(), on)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Check `name` the way the kernel's `dev_valid_name` does, so a bad name is
/// a clear `InvalidInput` rather than a bare `EINVAL` from an ioctl.
fn validate_name(name: &str) -> io::Result<()> {
    let bad = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not a valid interface name: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("it is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are reserved");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return bad("it contains `/`, `:`, a NUL or white space");
    }
    Ok(())
}

#[allow(unsafe_code)]
mod sys {
    //! The TUN/TAP ioctls and raw `read`/`write`.

    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    use super::MAX_IFNAME_LEN;

    /// `struct ifreq` as TUNSETIFF reads and writes it: the name, then the
    /// flags (a `short`) at the start of the 24-byte union. 40 bytes in all,
    /// the size of the kernel's `struct ifreq` on 64-bit and 32-bit targets
    /// alike (the union holds a `struct ifmap`, 24 bytes or 16; the copy of
    /// 40 bytes from a 32-bit process is never larger than this buffer).
    #[repr(C)]
    struct IfReqFlags {
        name: [libc::c_char; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }

    const _: () = assert!(std::mem::size_of::<IfReqFlags>() == 40);

    /// TUNSETIFF: attach `fd` to (or create) interface `name` with `flags`,
    /// and return the name the kernel settled on.
    pub(super) fn set_iff(
        fd: BorrowedFd<'_>,
        name: &str,
        flags: libc::c_int,
    ) -> io::Result<String> {
        debug_assert!(name.len() <= MAX_IFNAME_LEN);
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            // The TUN flags all fit the low 16 bits, as the ABI requires.
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: `fd` is an open descriptor of /dev/net/tun for the duration
        // of the call; TUNSETIFF reads and writes at most
        // `sizeof(struct ifreq)` (40) bytes at the pointer, and `req` is a
        // live, properly aligned, 40-byte `#[repr(C)]` value with a
        // NUL-terminated name (IFNAMSIZ bytes, at most 15 of them used).
        let rc =
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = req
            .name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(libc::IFNAMSIZ);
        let bytes: Vec<u8> = req.name[..len].iter().map(|&c| c as u8).collect();
        String::from_utf8(bytes).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the kernel returned a non-UTF-8 interface name",
            )
        })
    }

    /// TUNSETPERSIST: keep (or stop keeping) the interface after close.
    pub(super) fn set_persist(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
        // SAFETY: `fd` is an open, attached TUN descriptor; TUNSETPERSIST
        // takes its argument by value (an integer), no memory is passed.
        let rc =
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(on)) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// TUNSETOWNER: let `uid` open the interface.
    pub(super) fn set_owner(fd: BorrowedFd<'_>, uid: u32) -> io::Result<()> {
        // SAFETY: `fd` is an open, attached TUN descriptor; TUNSETOWNER takes
        // the uid by value, no memory is passed.
        let rc =
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOWNER, libc::c_ulong::from(uid)) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// read(2) of one frame.
    pub(super) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for
        // the duration of the call, and `fd` is open.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // n >= 0 and at most buf.len().
        Ok(n as usize)
    }

    /// write(2) of one frame.
    pub(super) fn write(fd: BorrowedFd<'_>, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is a valid, readable region of `frame.len()` bytes
        // for the duration of the call, and `fd` is open.
        let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // n >= 0 and at most frame.len().
        Ok(n as usize)
    }

    /// writev(2) of one frame from several buffers.
    pub(super) fn writev(fd: BorrowedFd<'_>, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let count = libc::c_int::try_from(parts.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` (std
        // guarantees it on Unix); `parts` and the buffers it points to are
        // valid and readable for the duration of the call, and `fd` is open.
        let n = unsafe { libc::writev(fd.as_raw_fd(), parts.as_ptr().cast(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // n >= 0 and at most the sum of the lengths.
        Ok(n as usize)
    }

    /// TUNSETOFFLOAD: the offloads userspace accepts.
    pub(super) fn set_offload(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
        // SAFETY: `fd` is an open, attached TUN descriptor; TUNSETOFFLOAD
        // takes the flags by value, no memory is passed.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Move the calling thread into a fresh network namespace of its own, so
    /// tests create interfaces without touching the host's.
    #[cfg(test)]
    pub(super) fn unshare_netns() -> io::Result<()> {
        // SAFETY: unshare takes flags by value; CLONE_NEWNET only changes the
        // namespace of the calling thread (the test thread, which exits after).
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::empty("")]
    #[case::too_long("abcdefghijklmnop")]
    #[case::dot(".")]
    #[case::dotdot("..")]
    #[case::slash("a/b")]
    #[case::colon("eth0:1")]
    #[case::space("eth 0")]
    #[case::nul("eth\u{0}")]
    fn rejects_names_the_kernel_refuses(#[case] name: &str) {
        let err = validate_name(name).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // Refused before any syscall, so this holds without privileges too.
        let err = Tap::open(name, &TapOptions::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[rstest]
    #[case("eth0")]
    #[case("abcdefghijklmno")]
    #[case("vsw-tap.1_x")]
    fn accepts_ordinary_names(#[case] name: &str) {
        validate_name(name).unwrap();
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2))
                    == Some("0")
            })
            .unwrap_or(false)
    }

    /// Interface names in the calling thread's network namespace.
    fn thread_ifnames() -> Vec<String> {
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        dev.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|n| n.trim().to_string())
            .collect()
    }

    /// Run `f` on a thread in a private network namespace (root only).
    fn in_private_netns(f: impl FnOnce() + Send + 'static) {
        if !is_root() {
            eprintln!("skipping: TAP tests need root (CAP_NET_ADMIN)");
            return;
        }
        std::thread::spawn(move || {
            sys::unshare_netns().unwrap();
            f();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn open_creates_a_nonblocking_tap_that_goes_away_on_close() {
        in_private_netns(|| {
            let tap = Tap::open("vswt0", &TapOptions::default()).unwrap();
            assert_eq!(tap.name(), "vswt0");
            assert!(thread_ifnames().iter().any(|n| n == "vswt0"));
            let mut buf = [0u8; 2048];
            let err = tap.read(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            // The interface is down: the kernel refuses frames.
            let err = tap.write(&[0u8; 60]).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EIO));
            drop(tap);
            assert!(!thread_ifnames().iter().any(|n| n == "vswt0"));
        });
    }

    #[test]
    fn persistent_tap_survives_close_and_can_be_reattached() {
        in_private_netns(|| {
            let opts = TapOptions {
                persist: true,
                ..TapOptions::default()
            };
            let tap = Tap::open("vswt1", &opts).unwrap();
            // A second descriptor cannot take an interface that is held.
            let busy = Tap::open("vswt1", &opts).unwrap_err();
            assert_eq!(busy.raw_os_error(), Some(libc::EBUSY));
            drop(tap);
            assert!(thread_ifnames().iter().any(|n| n == "vswt1"));

            let again = Tap::open("vswt1", &TapOptions::default()).unwrap();
            assert_eq!(again.name(), "vswt1");
            again.set_persist(false).unwrap();
            drop(again);
            assert!(!thread_ifnames().iter().any(|n| n == "vswt1"));
        });
    }

    #[test]
    fn owner_and_vnet_hdr_options_are_accepted() {
        in_private_netns(|| {
            let opts = TapOptions {
                persist: false,
                vnet_hdr: true,
                owner: Some(65534),
                multi_queue: false,
            };
            let tap = Tap::open("vswt2", &opts).unwrap();
            assert!(tap.as_raw_fd() >= 0);
            assert!(tap.vnet_hdr());
            assert!(thread_ifnames().iter().any(|n| n == "vswt2"));
        });
    }

    #[test]
    fn offloads_are_set_on_a_vnet_header_tap() {
        in_private_netns(|| {
            let opts = TapOptions {
                vnet_hdr: true,
                ..TapOptions::default()
            };
            let tap = Tap::open("vswt4", &opts).unwrap();
            let set = tap.enable_offloads().unwrap();
            assert_eq!(set & offload::TSO4, offload::TSO4);
            assert_eq!(set & offload::CSUM, offload::CSUM);
        });
    }

    #[test]
    fn a_multi_queue_tap_takes_one_descriptor_per_queue() {
        in_private_netns(|| {
            let opts = TapOptions {
                vnet_hdr: true,
                multi_queue: true,
                ..TapOptions::default()
            };
            let q0 = Tap::open("vswt5", &opts).unwrap();
            let q1 = Tap::open("vswt5", &opts).unwrap();
            assert_ne!(q0.as_raw_fd(), q1.as_raw_fd());
            // A single-queue attach to a multi-queue interface is refused.
            let single = Tap::open(
                "vswt5",
                &TapOptions {
                    vnet_hdr: true,
                    ..TapOptions::default()
                },
            )
            .unwrap_err();
            assert_eq!(single.raw_os_error(), Some(libc::EINVAL));
        });
    }

    #[test]
    fn a_non_tap_interface_of_that_name_is_refused() {
        in_private_netns(|| {
            // `lo` exists in every namespace and is not a TAP.
            let err = Tap::open("lo", &TapOptions::default()).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        });
    }
}
