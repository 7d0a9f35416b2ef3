//! The object's bare `xdp_pass` program, for the veth ends of traffic tests: a veth receives
//! frames redirected or sent by XDP only while its NAPI runs (an XDP program on it, or GRO).

static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-xdp-ebpf"));

/// Attaches the object's `xdp_pass` program to `iface` (in the calling thread's namespace); it
/// stays attached while the returned handle lives.
pub fn attach_pass(iface: &str) -> aya::Ebpf {
    let mut ebpf = aya::Ebpf::load(OBJECT).expect("load object");
    let prog: &mut aya::programs::Xdp = ebpf
        .program_mut("xdp_pass")
        .expect("xdp_pass")
        .try_into()
        .expect("xdp program");
    prog.load().expect("load xdp_pass");
    prog.attach(iface, aya::programs::XdpMode::Driver)
        .expect("attach xdp_pass");
    ebpf
}
