//! Test helper: `bpf-obj-get PATH` calls bpf(BPF_OBJ_GET) on a pinned object
//! and exits 0 on success or with the errno. Run under `setpriv` to try it as
//! another user.

const BPF_OBJ_GET: libc::c_int = 7;

/// The `obj_get` part of `union bpf_attr`, padded to a safe size.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: [u8; 108],
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: bpf-obj-get PATH");
    let c = std::ffi::CString::new(path).expect("path without NUL");
    let attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        pad: [0; 108],
    };
    // SAFETY: bpf(2) reads `size_of::<ObjGetAttr>()` bytes of a live, zeroed
    // attribute whose pathname points at a live C string.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>() as libc::c_uint,
        )
    };
    if fd >= 0 {
        println!("opened");
        std::process::exit(0);
    }
    let e = std::io::Error::last_os_error();
    println!("{e}");
    std::process::exit(e.raw_os_error().unwrap_or(255));
}
