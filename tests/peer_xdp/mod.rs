//! An XDP program on a test host's end of a veth. A veth sends the frames that the balancer's
//! program queues with `XDP_TX` (RSTs, too-big answers) only when its peer runs an XDP program,
//! or when something else wakes that peer; a real NIC sends them at once. The decapsulator, with
//! nothing to strip, passes every packet and is such a program.

use understudy::decap::Decap;
use understudy_testbed::Netns;

/// The program on `dev` in `ns`, kept attached while the value lives.
pub fn attach(ns: &Netns, dev: &str) -> Decap {
    ns.enter(|| {
        let mut d = Decap::load(None).expect("load an XDP program");
        let name = std::ffi::CString::new(dev).unwrap();
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        d.attach(dev, index, false)
            .expect("attach it to the host's end of the veth");
        d
    })
}
