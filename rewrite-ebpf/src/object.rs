//! What every object this crate builds carries besides its programs: the panic
//! handler, the license, and the build's identity.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

/// The build's identity, kept in the object so that builds from different inputs
/// differ even when their code does not: `REWRITE_BUILD_TAG` at build time (the
/// upgrade test builds a second object with its own tag). `rewrite status` shows each
/// object's version, a digest of its bytes.
#[used]
#[unsafe(no_mangle)]
static REWRITE_BUILD_TAG: [u8; 32] = build_tag();

const fn build_tag() -> [u8; 32] {
    let text = match option_env!("REWRITE_BUILD_TAG") {
        Some(text) => text.as_bytes(),
        None => b"default",
    };
    let mut tag = [0u8; 32];
    let mut index = 0;
    while index < text.len() && index < tag.len() {
        tag[index] = text[index];
        index += 1;
    }
    tag
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
