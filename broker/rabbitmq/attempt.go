package rabbitmq

import "context"

// firstAttempt returns the Delivery.Attempt of the first in-process attempt
// at a delivery: 1, plus maxAttempts (at least 1) for each trip down the
// group's retry chain, plus the quorum queue's delivery count (or one when
// the broker flags the delivery as redelivered). The arithmetic saturates
// at maxAttempt: no header value, forged or not, can overflow it or make it
// less than 1.
func firstAttempt(info delivered, redelivered bool, maxAttempts int) int64 {
	stride := int64(min(max(maxAttempts, 1), maxAttempt))
	hops := min(max(info.hops, 0), maxAttempt)
	base := satAdd(1, satMul(hops, stride))
	switch {
	case info.deliveryCount > 0:
		base = satAdd(base, min(info.deliveryCount, maxDeliveryCount))
	case redelivered:
		base = satAdd(base, 1)
	}
	return base
}

// satAdd and satMul add and multiply non-negative values, saturating at
// maxAttempt.
func satAdd(a, b int64) int64 {
	if a >= maxAttempt-b {
		return maxAttempt
	}
	return a + b
}

func satMul(a, b int64) int64 {
	if a != 0 && b > maxAttempt/a {
		return maxAttempt
	}
	return min(a*b, maxAttempt)
}

// rejectUndecodable rejects (nacks without requeue) a delivery the
// connection's guard could not let through, which hands it to the queue's
// dead-letter exchange (a retry chain's parking queue, in the end) or has
// the broker drop it when the queue has none. It logs at ERROR what is
// known of the delivery. It returns false when the reject could not be
// sent (the delivery comes back after a reconnect).
func (s *session) rejectUndecodable(j *job) bool {
	log := s.m.s.log
	log.Error("rabbitmq: rejecting a delivery that cannot be decoded to the dead-letter exchange",
		"queue", s.m.queue, "exchange", j.info.msg.Topic, "routing_key", j.info.msg.Key,
		"id", j.info.msg.ID, "reason", j.info.undecodable)
	if err := s.ch.Nack(j.tag, false, false); err != nil {
		log.Debug("rabbitmq: reject failed; the message will be redelivered", "queue", s.m.queue, "id", j.info.msg.ID, "err", err)
		return false
	}
	tel := s.m.s.tel
	tel.consumed.Add(context.Background(), 1, tel.reject)
	return true
}
