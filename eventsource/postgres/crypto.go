package postgres

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
)

// Crypto-shredding: each stream has a random 32-byte data key, stored
// wrapped (AES-256-GCM under Config.EncryptionKey, bound to the stream ID)
// in the keys table. Payloads and snapshots are sealed with AES-256-GCM
// under the data key, bound to the event ID (or the snapshot's stream), so
// a ciphertext cannot be moved to another event. Sealed data is a 12-byte
// nonce followed by the ciphertext and its tag.

func (s *Store) newWrappedKey(streamID string) ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("eventsource/postgres: new data key: %w", err)
	}
	return seal(s.aead, key, []byte("stream:"+streamID))
}

func (s *Store) unwrapKey(wrapped []byte, streamID string) (cipher.AEAD, error) {
	if s.aead == nil {
		return nil, fmt.Errorf("eventsource/postgres: stream %q is encrypted and the store has no EncryptionKey", streamID)
	}
	key, err := open(s.aead, wrapped, []byte("stream:"+streamID))
	if err != nil {
		return nil, fmt.Errorf("eventsource/postgres: unwrap the data key of stream %q (another EncryptionKey?): %w", streamID, err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func seal(a cipher.AEAD, plain, aad []byte) ([]byte, error) {
	out := make([]byte, a.NonceSize(), a.NonceSize()+len(plain)+a.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("eventsource/postgres: nonce: %w", err)
	}
	return a.Seal(out, out, plain, aad), nil
}

func open(a cipher.AEAD, sealed, aad []byte) ([]byte, error) {
	if len(sealed) < a.NonceSize()+a.Overhead() {
		return nil, fmt.Errorf("sealed data of %d bytes is too short", len(sealed))
	}
	n := a.NonceSize()
	return a.Open(nil, sealed[:n], sealed[n:], aad)
}

// keyCache unwraps each stream's key once per operation.
type keyCache struct {
	s    *Store
	keys map[string]cipher.AEAD
}

func (c *keyCache) get(streamID string, wrapped []byte) (cipher.AEAD, error) {
	if a, ok := c.keys[streamID]; ok {
		return a, nil
	}
	a, err := c.s.unwrapKey(wrapped, streamID)
	if err != nil {
		return nil, err
	}
	if c.keys == nil {
		c.keys = map[string]cipher.AEAD{}
	}
	c.keys[streamID] = a
	return a, nil
}
