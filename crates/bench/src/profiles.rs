//! Built-in workload profiles for when no dataset file is given: real prompts (written for lapsd, a
//! few dozen per profile) and output lengths drawn from a log-normal distribution per profile.
//!
//! The paper's datasets (Chatbot Instruction Prompts, MBPP, Mini Thinky) are not available here, so
//! the length distributions are assumptions, documented in docs/bench.md:
//! - chatbot: median 100 tokens, sigma 0.8 (short chat answers; ShareGPT replies have a median of
//!   ~1,115 characters = ~280 tokens, chat-instruction datasets are shorter);
//! - mbpp: median 150 tokens, sigma 0.6 (a short Python function with a sentence of explanation);
//! - thinky: median 600 tokens, sigma 0.5 (step-by-step reasoning traces);
//! - mixed: each request is an mbpp or a chatbot one with probability 1/2 (code and chat in one
//!   stream, where the best speculation length differs by request).
//!
//! Lengths are clamped to [4, max_output_tokens]; with the default cap of 512 most thinky requests
//! ask for the cap.
use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, LogNormal};

/// One of the built-in profiles (the same names the simulator uses).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Chatbot,
    Mbpp,
    Thinky,
    /// Half mbpp, half chatbot requests, drawn independently per request.
    Mixed,
}

/// Shortest output length drawn (the ShareGPT filter of vLLM also drops replies under 4 tokens).
pub const MIN_OUTPUT_TOKENS: u32 = 4;

/// The prompts and output-length distribution of one kind of request.
#[derive(Debug)]
pub struct RequestKind {
    pub prompts: &'static [&'static str],
    /// Median of the output length in tokens.
    pub median_output_tokens: f64,
    /// Log-space sigma of the output length.
    pub sigma: f64,
}

const CHATBOT: RequestKind = RequestKind {
    prompts: CHATBOT_PROMPTS,
    median_output_tokens: 100.0,
    sigma: 0.8,
};
const MBPP: RequestKind = RequestKind {
    prompts: MBPP_PROMPTS,
    median_output_tokens: 150.0,
    sigma: 0.6,
};
const THINKY: RequestKind = RequestKind {
    prompts: THINKY_PROMPTS,
    median_output_tokens: 600.0,
    sigma: 0.5,
};

impl Profile {
    /// The kinds of request this profile sends, each equally likely.
    pub fn kinds(self) -> &'static [RequestKind] {
        match self {
            Profile::Chatbot => &[CHATBOT],
            Profile::Mbpp => &[MBPP],
            Profile::Thinky => &[THINKY],
            Profile::Mixed => &[MBPP, CHATBOT],
        }
    }

    /// Draws a prompt and an output length (clamped to [MIN_OUTPUT_TOKENS, max_output_tokens]).
    pub fn sample<R: Rng + ?Sized>(
        self,
        rng: &mut R,
        max_output_tokens: u32,
        output_scale: f64,
    ) -> (&'static str, u32) {
        let kinds = self.kinds();
        // Single-kind profiles draw no extra number, so their plans are the same as before
        // mixed profiles existed.
        let kind = match kinds {
            [only] => only,
            _ => &kinds[rng.gen_range(0..kinds.len())],
        };
        // Non-empty constant lists: `choose` cannot return None.
        let prompt = kind.prompts.choose(rng).copied().unwrap_or("Hello!");
        let (median, sigma) = (kind.median_output_tokens, kind.sigma);
        // median > 0 and sigma > 0 are constants: the distribution is valid.
        let lengths = LogNormal::new(median.ln(), sigma).expect("valid log-normal constants");
        // Scaled before the cap, as datasets are (`--output-scale`).
        let drawn = (lengths.sample(rng) * output_scale).round();
        let upper = max_output_tokens.max(MIN_OUTPUT_TOKENS);
        let tokens = (drawn as u32).clamp(MIN_OUTPUT_TOKENS, upper);
        (prompt, tokens)
    }
}

const CHATBOT_PROMPTS: &[&str] = &[
    "What is the difference between weather and climate?",
    "Can you suggest three names for a small bakery that sells sourdough bread?",
    "How do I politely decline a meeting invitation from my manager?",
    "Explain what a black hole is to a ten-year-old.",
    "What are some good habits for getting better sleep?",
    "Write a short thank-you note to a neighbour who watered my plants.",
    "Why is the sky blue?",
    "Give me a simple recipe for a vegetable soup.",
    "What should I pack for a three-day hiking trip?",
    "How does a credit score work?",
    "Summarize the plot of Romeo and Juliet in a few sentences.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Suggest a weekend itinerary for a first visit to Lisbon.",
    "How can I keep my houseplants alive in winter?",
    "What is the difference between a virus and a bacterium?",
    "Write a haiku about the first snow of the year.",
    "How do I start learning to play the guitar?",
    "What are the pros and cons of working from home?",
    "Explain compound interest with a small example.",
    "What is a good way to memorize vocabulary in a new language?",
    "Tell me a fun fact about octopuses.",
    "How do vaccines train the immune system?",
    "What questions should I ask at the end of a job interview?",
    "Give me three ideas for a rainy-day activity with kids.",
    "What is the difference between baking soda and baking powder?",
    "How do solar panels turn sunlight into electricity?",
    "Write a two-sentence horror story.",
    "How can I make my morning routine more productive?",
    "What causes the seasons on Earth?",
    "Recommend a few classic novels for someone who enjoys mysteries.",
    "How do I apologize to a friend after an argument?",
    "What is machine learning, in plain words?",
];

const MBPP_PROMPTS: &[&str] = &[
    "Write a Python function to reverse the words in a sentence.",
    "Write a Python function that returns the second largest number in a list.",
    "Write a Python function to check whether a string is a palindrome, ignoring case and spaces.",
    "Write a Python function that counts the vowels in a string.",
    "Write a Python function to compute the factorial of a non-negative integer iteratively.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Write a Python function to find the greatest common divisor of two integers.",
    "Write a Python function that returns all prime numbers below n using a sieve.",
    "Write a Python function to flatten a nested list of integers.",
    "Write a Python function that removes duplicate elements from a list while keeping the order.",
    "Write a Python function to convert a Roman numeral string to an integer.",
    "Write a Python function that returns the n-th Fibonacci number using memoization.",
    "Write a Python function to check whether two strings are anagrams of each other.",
    "Write a Python function that rotates a list to the right by k positions.",
    "Write a Python function to find the longest common prefix of a list of strings.",
    "Write a Python function that counts how many times each word appears in a text.",
    "Write a Python function to transpose a matrix given as a list of lists.",
    "Write a Python function that checks whether a number is a perfect square without using sqrt.",
    "Write a Python function to find the index of a target in a sorted list using binary search.",
    "Write a Python function that converts a decimal number to its binary representation as a string.",
    "Write a Python function to return the sum of the digits of a positive integer.",
    "Write a Python function that finds the maximum sum of a contiguous sub-array.",
    "Write a Python function to validate that brackets in a string are balanced.",
    "Write a Python function that returns the intersection of two lists without duplicates.",
    "Write a Python function to capitalize the first letter of every word in a string.",
    "Write a Python function that computes the running average of a list of numbers.",
    "Write a Python function to find the missing number in a list containing 1 to n with one gap.",
    "Write a Python function that groups a list of words by their first letter into a dictionary.",
    "Write a Python function to compute the area of a triangle from its three side lengths.",
    "Write a Python function that checks whether a year is a leap year.",
    "Write a Python function to count the number of set bits in an integer.",
    "Write a Python function that splits a list into chunks of size k.",
];

const THINKY_PROMPTS: &[&str] = &[
    "A train leaves at 9:40 and arrives at 13:15. How long is the journey in minutes? Think step by step.",
    "If 3 pencils cost 45 cents, how much do 14 pencils cost? Explain your reasoning.",
    "A rectangle has a perimeter of 36 cm and its length is twice its width. What is its area? Reason carefully.",
    "Sam is twice as old as Lea. In 6 years the sum of their ages will be 42. How old is Lea now? Show each step.",
    "A shop discounts a 80 dollar jacket by 25%, then adds 10% tax. What is the final price? Think it through.",
    "How many ways can 4 different books be arranged on a shelf? Explain why.",
    "A tank fills in 6 hours with pipe A and in 3 hours with pipe B. How long with both? Reason step by step.",
    "What is the sum of the integers from 1 to 200? Explain the method you use.",
    "A car travels 150 km at 60 km/h and then 150 km at 100 km/h. What is its average speed? Think carefully.",
    "If a coin is flipped three times, what is the probability of exactly two heads? Show your work.",
    "Maria reads 12 pages on Monday and each day reads 3 more pages than the day before. How many pages has she read after a week? Reason step by step.",
    "A farmer has chickens and cows, 30 heads and 74 legs in total. How many cows are there? Explain.",
    "What is the smallest positive integer divisible by 2, 3, 4, 5 and 6? Think step by step.",
    "A recipe needs 3 eggs for 8 muffins. How many eggs for 28 muffins, rounding up to whole eggs? Explain.",
    "A number increased by 20% and then decreased by 20% gives 96. What was the number? Reason carefully.",
    "How many diagonals does a convex decagon have? Derive the answer.",
    "Two workers paint a fence in 4 hours together; one alone takes 6 hours. How long does the other take alone? Think step by step.",
    "What is the remainder when 2 to the power 20 is divided by 7? Explain your reasoning.",
    "A bag has 5 red and 3 blue marbles. Two are drawn without replacement. What is the probability both are red? Show the steps.",
    "A square garden has an area of 196 square metres. How much fencing is needed to go around it twice? Reason it out.",
    "Tom saves 15 dollars a week and already has 40. After how many weeks will he have at least 250? Think step by step.",
    "Is 221 a prime number? Check carefully and explain.",
    "The average of five numbers is 18. Four of them are 12, 20, 15 and 25. What is the fifth? Show your reasoning.",
    "A clock shows 3:20. What is the angle between the hour and minute hands? Work it out step by step.",
    "A school has 480 students, 5/8 of them take the bus and a third of the rest walk. How many neither take the bus nor walk? Explain.",
    "Solve for x: 3(x - 4) + 2 = 2x + 7. Show each step.",
    "A bicycle wheel has a diameter of 70 cm. How many full turns does it make over 1 km? Reason carefully.",
    "How many three-digit numbers have digits that add up to 5? Think it through systematically.",
    "An investment of 1000 dollars grows 5% per year, compounded yearly. What is it worth after 3 years? Show the calculation.",
    "A ladder 10 m long leans on a wall with its foot 6 m from the wall. How high up the wall does it reach? Explain.",
    "If today is Wednesday, what day of the week will it be in 100 days? Reason step by step.",
    "A box of 24 chocolates is shared so that Ann gets twice as many as Ben and Ben gets twice as many as Cal. How many does each get? Explain.",
];

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn each_profile_has_a_few_dozen_distinct_prompts() {
        for profile in [Profile::Chatbot, Profile::Mbpp, Profile::Thinky] {
            let prompts = profile.kinds()[0].prompts;
            assert!(prompts.len() >= 30, "{profile:?}");
            let mut unique = prompts.to_vec();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), prompts.len(), "{profile:?} has duplicates");
        }
    }

    #[test]
    fn drawn_lengths_have_the_profile_median_and_respect_the_cap() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for profile in [Profile::Chatbot, Profile::Mbpp, Profile::Thinky] {
            let median = profile.kinds()[0].median_output_tokens;
            let mut lengths: Vec<u32> = (0..20_001)
                .map(|_| profile.sample(&mut rng, 100_000, 1.0).1)
                .collect();
            lengths.sort_unstable();
            let drawn_median = lengths[lengths.len() / 2] as f64;
            assert!(
                (drawn_median - median).abs() < 0.05 * median,
                "{profile:?}: median {drawn_median}, expected {median}"
            );
            let capped = (0..1000).map(|_| profile.sample(&mut rng, 64, 1.0).1);
            assert!(capped
                .into_iter()
                .all(|t| (MIN_OUTPUT_TOKENS..=64).contains(&t)));
        }
    }

    #[test]
    fn output_scale_scales_profile_lengths_before_the_cap() {
        for profile in [Profile::Chatbot, Profile::Mbpp, Profile::Thinky] {
            let median = profile.kinds()[0].median_output_tokens;
            let draw = |scale: f64| -> Vec<u32> {
                let mut rng = ChaCha8Rng::seed_from_u64(5);
                (0..2_001)
                    .map(|_| profile.sample(&mut rng, 100_000, scale).1)
                    .collect()
            };
            let (full, quarter) = (draw(1.0), draw(0.25));
            // Same draws, a quarter of the length each (up to rounding and the minimum).
            for (f, q) in full.iter().zip(&quarter) {
                let expected = (f64::from(*f) * 0.25).round() as u32;
                assert!(
                    q.abs_diff(expected.max(MIN_OUTPUT_TOKENS)) <= 1,
                    "{f} -> {q}"
                );
            }
            let mut sorted = quarter.clone();
            sorted.sort_unstable();
            let drawn_median = f64::from(sorted[sorted.len() / 2]);
            assert!(
                (drawn_median - 0.25 * median).abs() < 0.1 * median,
                "{profile:?}: median {drawn_median}, expected {}",
                0.25 * median
            );
        }
    }

    #[test]
    fn mixed_sends_mbpp_and_chatbot_requests_in_equal_shares() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 4_000u32;
        let (mut mbpp, mut chatbot) = (0u32, 0u32);
        for _ in 0..n {
            let (prompt, _) = Profile::Mixed.sample(&mut rng, 512, 1.0);
            if MBPP_PROMPTS.contains(&prompt) {
                mbpp += 1;
            } else if CHATBOT_PROMPTS.contains(&prompt) {
                chatbot += 1;
            } else {
                panic!("mixed drew a prompt of neither kind: {prompt}");
            }
        }
        // Binomial(4000, 1/2): sd ~32, so +-200 is >6 sd.
        assert!(mbpp.abs_diff(n / 2) < 200, "mbpp {mbpp}, chatbot {chatbot}");
        assert_eq!(mbpp + chatbot, n);
    }
}
