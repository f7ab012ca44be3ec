package consumer

// LowerLimit is the record size limit a dead-letter writer assumes after its
// destination refused records as too large although they were within limit:
// the limit it had was wrong (a fallback, when the broker would not say, or
// lowered since it asked). largest is the biggest refused record. The result
// is below both: the refused record no longer fits (a store then leaves its
// payload out), or, when several were refused, the batches are cut at half
// the limit (records that fit one by one may have made a batch too large). Each refusal
// lowers it, so a writer converges on the real limit. n is how many records
// were refused: one was too large on its own, and the limit goes just below
// it.
func LowerLimit(limit, largest, n int) int {
	if n == 1 {
		return min(limit-1, largest-1)
	}
	return min(limit-1, max(largest-1, limit/2))
}
