// The per-IP limit key: IPv6 clients are counted by their network, IPv4 (also written as IPv6)
// by their address.
import t from 'tap'
import { limitKey } from '../src/limits/address.js'

t.test('IPv4 addresses are their own key', async t => {
  t.equal(limitKey('203.0.113.7', 64), '203.0.113.7')
  t.equal(limitKey('127.0.0.1', 48), '127.0.0.1')
})

t.test('IPv4-mapped IPv6 is the IPv4 address, in either notation', async t => {
  t.equal(limitKey('::ffff:203.0.113.7', 64), '203.0.113.7')
  t.equal(limitKey('::FFFF:cb00:7107', 64), '203.0.113.7')
  t.equal(limitKey('0:0:0:0:0:ffff:203.0.113.7', 128), '203.0.113.7')
})

t.test('IPv6 addresses are keyed on their /64 by default, every notation alike', async t => {
  const key = '2001:db8:1:2::/64'
  for (const ip of ['2001:db8:1:2::1', '2001:db8:1:2:ffff:ffff:ffff:ffff', '2001:0DB8:0001:0002:0:0:0:abcd', '2001:db8:1:2:a:b:1.2.3.4']) {
    t.equal(limitKey(ip, 64), key, ip)
  }
  t.not(limitKey('2001:db8:1:3::1', 64), key, 'the next /64 is another client')
})

t.test('the prefix is configurable, byte-unaligned prefixes included', async t => {
  t.equal(limitKey('2001:db8:abcd:12ff::1', 48), '2001:db8:abcd::/48')
  t.equal(limitKey('2001:db8:abcd:12ff::1', 56), '2001:db8:abcd:1200::/56')
  t.equal(limitKey('2001:db8:abcd:12ff::1', 60), '2001:db8:abcd:12f0::/60')
  t.equal(limitKey('2001:db8:abcd:12ff::1', 1), '::/1')
  t.equal(limitKey('ffff:db8::1', 1), '8000::/1')
  t.equal(limitKey('2001:db8::0001', 128), '2001:db8::1', 'a /128 is the address itself, in RFC 5952 form')
  t.equal(limitKey('2001:0:0:1:0:0:0:1', 128), '2001:0:0:1::1', 'the longest zero run is the one compressed')
})

t.test('zone ids are dropped', async t => {
  t.equal(limitKey('fe80::1%eth0', 64), 'fe80::/64')
  t.equal(limitKey('fe80::1%eth0', 128), 'fe80::1')
  t.equal(limitKey('::ffff:10.0.0.1%3', 64), '10.0.0.1')
})

t.test('loopback and the unspecified address', async t => {
  t.equal(limitKey('::1', 64), '::/64')
  t.equal(limitKey('::1', 128), '::1')
  t.equal(limitKey('::', 128), '::')
})

t.test('what is not an address is its own key', async t => {
  t.equal(limitKey('unknown', 64), 'unknown')
  t.equal(limitKey('', 64), '')
  t.equal(limitKey('1.2.3', 64), '1.2.3')
})
