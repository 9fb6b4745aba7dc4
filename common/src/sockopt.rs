//! Socket options the `zmq` 0.9 crate does not wrap.
#![allow(unsafe_code)]

use std::os::raw::{c_int, c_void};

fn set_int(socket: &mut zmq::Socket, option: u32, value: c_int) -> zmq::Result<()> {
    // SAFETY: the pointer is the live socket owned by `socket` (borrowed mutably, so no other
    // thread uses it), and the value is a c_int as libzmq expects for these options.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            option as c_int,
            &value as *const c_int as *const c_void,
            std::mem::size_of::<c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: zmq_errno only reads the calling thread's errno.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    }
}

/// `ZMQ_XPUB_NODROP`: a send that would exceed a subscriber's HWM fails with EAGAIN instead of
/// dropping silently.
pub fn set_xpub_nodrop(socket: &mut zmq::Socket, on: bool) -> zmq::Result<()> {
    set_int(socket, zmq_sys::ZMQ_XPUB_NODROP, c_int::from(on))
}

/// `ZMQ_MULTICAST_MAXTPDU`: the largest PGM packet, bytes.
pub fn set_multicast_maxtpdu(socket: &mut zmq::Socket, bytes: i32) -> zmq::Result<()> {
    set_int(socket, zmq_sys::ZMQ_MULTICAST_MAXTPDU, bytes)
}

/// `ZMQ_XPUB_MANUAL`: subscriptions take effect only when the application applies them.
pub fn set_xpub_manual(socket: &mut zmq::Socket, on: bool) -> zmq::Result<()> {
    set_int(socket, zmq_sys::ZMQ_XPUB_MANUAL, c_int::from(on))
}
