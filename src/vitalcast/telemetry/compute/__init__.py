"""What a compute computes: one GROUP BY, the pure assembly into a payload, its partials, insights,
save history and deltas. Nothing here takes a lease or commits."""
