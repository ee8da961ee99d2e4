use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// Made by CPython's pickle: `pickle.dumps(d, protocol=2)` of
// a = []; d = {'x': a, 'y': a, 'n': None, 't': True, 'f': 1.5, 'i': -3, 'big': 2**40,
// 'neg': -2**40, 's': 'héllo', 'b': b'\x00\xff', 'tup': (1, 2, 3), 'set': {7}}; a.append(1)
const PLAIN: &str = "80027d71002858010000007871015d71024b01615801000000797103680258010000006e71044e5801000000747105885801000000667106473ff800000000000058010000006971074afdffffff580300000062696771088a0600000000000158030000006e656771098a060000000000ff580100000073710a580600000068c3a96c6c6f710b580100000062710c635f636f646563730a656e636f64650a710d580300000000c3bf710e58060000006c6174696e31710f867110527111580300000074757071124b014b024b0387711358030000007365747114635f5f6275696c74696e5f5f0a7365740a71155d71164b0761857117527118752e";
// `pickle.dumps(OrderedDict(a=1, b=[2]), protocol=4)`: FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL.
const ORDERED4: &str = "80049533000000000000008c0b636f6c6c656374696f6e73948c0b4f72646572656444696374949394295294288c0161944b018c0162945d944b0261752e";
// An object whose __reduce__ is (os.system, ('echo pwned',)).
const EVIL: &str =
    "800263706f7369780a73797374656d0a7100580a0000006563686f2070776e656471018571025271032e";

#[test]
fn plain_values_rebuild_as_python_does() {
    let p = Pickle::parse(&hex(PLAIN)).unwrap();
    let r = p.root();
    let get = |k: &str| p.get(p.dict_get(r, k).unwrap()).clone();
    assert_eq!(get("n"), Obj::None);
    assert_eq!(get("t"), Obj::Bool(true));
    assert_eq!(get("f"), Obj::Float(1.5));
    assert_eq!(get("i"), Obj::Int(-3));
    assert_eq!(get("big"), Obj::Int(1 << 40));
    assert_eq!(get("neg"), Obj::Int(-(1 << 40)));
    assert_eq!(get("s"), Obj::Str("héllo".into()));
    assert_eq!(get("b"), Obj::Bytes(vec![0, 255]));
    let tup: Vec<Obj> = p
        .seq(p.dict_get(r, "tup").unwrap())
        .unwrap()
        .iter()
        .map(|&i| p.get(i).clone())
        .collect();
    assert_eq!(tup, vec![Obj::Int(1), Obj::Int(2), Obj::Int(3)]);
    let Obj::Set(s) = get("set") else {
        panic!("not a set")
    };
    assert_eq!(p.get(s[0]), &Obj::Int(7));
    // The memo shares one list: both keys see the element appended after it was memoised.
    let (x, y) = (p.dict_get(r, "x").unwrap(), p.dict_get(r, "y").unwrap());
    assert_eq!(x, y);
    assert_eq!(p.seq(x).unwrap().len(), 1);
}

#[test]
fn protocol_4_ordered_dict() {
    let p = Pickle::parse(&hex(ORDERED4)).unwrap();
    let items = p.dict_items(p.root()).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(p.get(p.dict_get(p.root(), "a").unwrap()), &Obj::Int(1));
    assert_eq!(p.seq(p.dict_get(p.root(), "b").unwrap()).unwrap().len(), 1);
}

#[test]
fn a_foreign_global_is_refused_by_name() {
    let e = Pickle::parse(&hex(EVIL)).unwrap_err();
    assert_eq!(e, PickleError::RefusedGlobal("posix.system".into()));
    assert!(e.to_string().contains("posix.system"), "{e}");
    for (m, n) in [
        ("builtins", "eval"),
        ("torch", "load"),
        ("subprocess", "Popen"),
        ("builtins", "getattr"),
    ] {
        let mut b = vec![0x80, 2, b'c'];
        b.extend(format!("{m}\n{n}\n").bytes());
        b.push(b'.');
        assert!(
            matches!(Pickle::parse(&b), Err(PickleError::RefusedGlobal(_))),
            "{m}.{n}"
        );
    }
}

#[test]
fn malformed_input_is_an_error_never_a_panic() {
    let plain = hex(PLAIN);
    for cut in 0..plain.len() {
        assert!(Pickle::parse(&plain[..cut]).is_err(), "prefix {cut} parsed");
    }
    for bad in [
        &b""[..],
        &[0x82, 1, b'.'][..], // EXT1: the extension registry is not read
        &[b'h', 7, b'.'][..], // memo get of an undefined key
        &[b'a', b'.'][..],    // append on an empty stack
        &[b'X', 255, 255, 255, 255][..], // a string longer than the input
        &[b'(', b'u', b'.'][..], // SETITEMS with no dict
        &[b'N', b'N', b'R', b'.'][..], // a call of None
    ] {
        assert!(Pickle::parse(bad).is_err(), "{bad:?}");
    }
    // Deeply nested containers are fine: the reader keeps no recursion.
    let mut deep = vec![0x80, 2];
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.extend(std::iter::repeat_n(b'a', 99_999));
    deep.push(b'.');
    assert!(Pickle::parse(&deep).is_ok());
    // A 72-bit integer is kept as its bytes.
    let p = Pickle::parse(&[0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, b'.']).unwrap();
    assert_eq!(
        p.get(p.root()),
        &Obj::BigInt(vec![1, 2, 3, 4, 5, 6, 7, 8, 9])
    );
}
