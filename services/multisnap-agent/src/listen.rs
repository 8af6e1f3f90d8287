//! Who may reach the agent: its TCP listeners (each can be turned off), and the owner group and
//! mode of its unix sockets. These are the command line's types; `permissions` applies them.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// The spelling that turns a TCP listener off.
pub const OFF: &str = "none";

/// A TCP listener's address, or off (`none`): the agent then serves that protocol only on its
/// unix socket, where file permissions decide who gets in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpListen(Option<SocketAddr>);

impl TcpListen {
    pub fn addr(self) -> Option<SocketAddr> {
        self.0
    }
}

impl FromStr for TcpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<TcpListen, String> {
        if s == OFF {
            return Ok(TcpListen(None));
        }
        s.parse().map(|a| TcpListen(Some(a))).map_err(|_| {
            format!("{s:?} is neither an address (e.g. 127.0.0.1:10809, [::1]:10809) nor {OFF:?}")
        })
    }
}

impl fmt::Display for TcpListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str(OFF),
        }
    }
}

/// Permission bits of the unix sockets, written in octal (`0660`, `660` or `0o660`).
/// Connecting needs write permission on the socket, so `0660` lets the owner and the group in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl FromStr for SocketMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SocketMode, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(SocketMode(m)),
            _ => Err(format!(
                "{s:?} is not an octal permission mode from 0 to 0777 (e.g. 0660)"
            )),
        }
    }
}

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// A group id, given on the command line as a number or a group name (looked up at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gid(pub libc::gid_t);

impl FromStr for Gid {
    type Err = String;

    fn from_str(s: &str) -> Result<Gid, String> {
        if let Ok(n) = s.parse::<libc::gid_t>() {
            return Ok(Gid(n));
        }
        group_by_name(s)
            .map(Gid)
            .ok_or_else(|| format!("no group named {s:?} (give a group name or a numeric GID)"))
    }
}

/// `getgrnam_r`: the GID of group `name`, None if there is none (or the name holds a NUL).
fn group_by_name(name: &str) -> Option<libc::gid_t> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    loop {
        // SAFETY: every pointer is valid for the call: `grp` and `result` are locals, `buf`
        // is a live buffer of the length passed; getgrnam_r writes only within them.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return (rc == 0 && !result.is_null()).then_some(grp.gr_gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_or_none() {
        assert_eq!("none".parse::<TcpListen>().unwrap().addr(), None);
        let a: TcpListen = "127.0.0.1:10809".parse().unwrap();
        assert_eq!(a.addr(), Some("127.0.0.1:10809".parse().unwrap()));
        assert_eq!(a.to_string(), "127.0.0.1:10809");
        assert_eq!(TcpListen(None).to_string(), "none");
        for bad in ["", "off", "None", "localhost", "127.0.0.1"] {
            assert!(bad.parse::<TcpListen>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn socket_modes_are_octal() {
        assert_eq!("0660".parse::<SocketMode>(), Ok(SocketMode(0o660)));
        assert_eq!("660".parse::<SocketMode>(), Ok(SocketMode(0o660)));
        assert_eq!("0o600".parse::<SocketMode>(), Ok(SocketMode(0o600)));
        assert_eq!("0".parse::<SocketMode>(), Ok(SocketMode(0)));
        assert_eq!(SocketMode(0o660).to_string(), "0660");
        for bad in ["", "0o", "0668", "1777", "rw-rw----", "-1"] {
            assert!(bad.parse::<SocketMode>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn groups_by_number_or_name() {
        assert_eq!("4242".parse::<Gid>(), Ok(Gid(4242)));
        // Every Linux system has group root, GID 0.
        assert_eq!("root".parse::<Gid>(), Ok(Gid(0)));
        let err = "no-such-group-here".parse::<Gid>().unwrap_err();
        assert!(err.contains("no group named"), "{err}");
    }
}
