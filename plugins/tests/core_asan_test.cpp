// Drives the CPU math core through its C ABI over edge-case shapes, built with AddressSanitizer
// and UBSan (see CMakeLists.txt): every buffer is allocated at its exact size, so any read or
// write out of bounds aborts. Results are also checked against a naive double-precision reference.
// Exit status 0 and a line "N passed, 0 failed" when everything holds.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" {
int32_t ef_linear_scan_f32(const float*, const float*, const float*, float*, float*, int64_t, int64_t, int64_t,
                           int32_t, char*, int64_t);
int32_t ef_gated_attention_f32(const float*, const float*, const float*, const float*, const int64_t*, const float*,
                               float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, int32_t, char*,
                               int64_t);
const char* ef_cpu_isa();
const char* ef_cpu_isa_paths();
int32_t ef_cpu_set_isa(const char*, char*, int64_t);
}

namespace {

std::mt19937 rng(1234);
int passed = 0, failed = 0;

std::vector<float> randn(size_t n, float lo = -1.f, float hi = 1.f) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

void expect(bool ok, const char* what) {
    if (ok) {
        ++passed;
    } else {
        ++failed;
        std::printf("FAIL: %s\n", what);
    }
}

void scan_case(int64_t B, int64_t T, int64_t C, bool reverse, bool with_h0) {
    auto a = randn(B * T * C, 0.f, 1.f), b = randn(B * T * C), h0 = randn(B * C);
    std::vector<float> h(B * T * C), last(B * C);
    char err[256];
    const int32_t st = ef_linear_scan_f32(a.data(), b.data(), with_h0 ? h0.data() : nullptr, h.data(), last.data(),
                                          B, T, C, reverse, err, sizeof err);
    double worst = 0;
    for (int64_t bi = 0; bi < B; ++bi)
        for (int64_t c = 0; c < C; ++c) {
            double s = with_h0 ? h0[bi * C + c] : 0.0;
            for (int64_t k = 0; k < T; ++k) {
                const int64_t t = reverse ? T - 1 - k : k, i = (bi * T + t) * C + c;
                s = a[i] * s + b[i];
                worst = std::fmax(worst, std::fabs(s - h[i]));
            }
            worst = std::fmax(worst, std::fabs(s - last[bi * C + c]));
        }
    char what[128];
    std::snprintf(what, sizeof what, "scan B=%ld T=%ld C=%ld rev=%d h0=%d err=%g", (long)B, (long)T, (long)C,
                  reverse, with_h0, worst);
    expect(st == 0 && worst < 1e-5, what);
}

void attention_case(int64_t B, int64_t H, int64_t N, int64_t M, int64_t D, int64_t Dv, int bias_kind, bool log_f,
                    bool causal) {
    auto q = randn(B * H * N * D), k = randn(B * H * M * D), v = randn(B * H * M * Dv);
    // bias_kind: 0 none, 1 full (B,H,N,M), 2 (H,N,M) padded, 3 (N,1) broadcast over keys
    int64_t bshape[4] = {1, 1, 1, 1};
    if (bias_kind == 1) { bshape[0] = B; bshape[1] = H; bshape[2] = N; bshape[3] = M; }
    if (bias_kind == 2) { bshape[1] = H; bshape[2] = N; bshape[3] = M; }
    if (bias_kind == 3) { bshape[2] = N; }
    auto bias = randn(bshape[0] * bshape[1] * bshape[2] * bshape[3]);
    auto lf = randn(B * H * N, -2.f, 0.f);
    std::vector<float> o(B * H * N * Dv);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    char err[256];
    const int32_t st = ef_gated_attention_f32(q.data(), k.data(), v.data(), bias_kind ? bias.data() : nullptr, bshape,
                                              log_f ? lf.data() : nullptr, o.data(), B, H, N, M, D, Dv, scale, causal,
                                              err, sizeof err);
    const bool is_causal = causal || log_f;
    double worst = 0;
    std::vector<double> logits(M);
    for (int64_t bi = 0; bi < B; ++bi)
        for (int64_t hi = 0; hi < H; ++hi) {
            std::vector<double> c(N, 0.0);
            double run = 0;
            for (int64_t j = 0; j < N && log_f; ++j) c[j] = (run += lf[(bi * H + hi) * N + j]);
            for (int64_t i = 0; i < N; ++i) {
                double mx = -INFINITY;
                for (int64_t j = 0; j < M; ++j) {
                    double s = 0;
                    for (int64_t d = 0; d < D; ++d) s += double(q[((bi * H + hi) * N + i) * D + d]) * k[((bi * H + hi) * M + j) * D + d];
                    s *= scale;
                    if (bias_kind) {
                        const int64_t idx[4] = {bi, hi, i, j};
                        int64_t off = 0, stride = 1;
                        for (int a = 3; a >= 0; --a) { off += (bshape[a] == 1 ? 0 : idx[a]) * stride; stride *= bshape[a]; }
                        s += bias[off];
                    }
                    if (log_f) s += c[i] - c[j];
                    if (is_causal && j > i + M - N) s = -INFINITY;
                    logits[j] = s;
                    mx = std::fmax(mx, s);
                }
                double den = 0;
                for (int64_t j = 0; j < M; ++j) den += std::exp(logits[j] - mx);
                for (int64_t e = 0; e < Dv; ++e) {
                    double num = 0;
                    for (int64_t j = 0; j < M; ++j) num += std::exp(logits[j] - mx) * v[((bi * H + hi) * M + j) * Dv + e];
                    worst = std::fmax(worst, std::fabs(num / den - o[((bi * H + hi) * N + i) * Dv + e]));
                }
            }
        }
    char what[160];
    std::snprintf(what, sizeof what, "attention B=%ld H=%ld N=%ld M=%ld D=%ld Dv=%ld bias=%d log_f=%d causal=%d err=%g",
                  (long)B, (long)H, (long)N, (long)M, (long)D, (long)Dv, bias_kind, log_f, causal, worst);
    expect(st == 0 && worst < 1e-5, what);
}

void bad_inputs() {
    char err[256];
    std::vector<float> a(6, 0.5f), b(6, 1.f), h(6), last(2);
    b[4] = std::numeric_limits<float>::quiet_NaN();
    expect(ef_linear_scan_f32(a.data(), b.data(), nullptr, h.data(), last.data(), 1, 3, 2, 0, err, sizeof err) == 2,
           "scan rejects NaN");
    expect(ef_linear_scan_f32(a.data(), b.data(), nullptr, h.data(), last.data(), 1, 0, 2, 0, err, sizeof err) == 1,
           "scan rejects T=0");
    std::vector<float> q(8, 0.1f), kk(8, 0.1f), v(8, 0.1f), o(8);
    expect(ef_gated_attention_f32(q.data(), kk.data(), v.data(), nullptr, nullptr, nullptr, o.data(), 1, 1, 4, 2, 2, 4,
                                  1.f, 1, err, sizeof err) == 1,
           "attention rejects causal with M < N");
    int64_t bad_bias[4] = {1, 1, 3, 2};
    std::vector<float> bias(6, 0.f);
    expect(ef_gated_attention_f32(q.data(), kk.data(), v.data(), bias.data(), bad_bias, nullptr, o.data(), 1, 1, 4, 4, 2,
                                  2, 1.f, 0, err, sizeof err) == 1,
           "attention rejects a non-broadcastable bias");
    q[3] = std::numeric_limits<float>::infinity();
    expect(ef_gated_attention_f32(q.data(), kk.data(), v.data(), nullptr, nullptr, nullptr, o.data(), 1, 1, 4, 4, 2, 2,
                                  1.f, 0, err, sizeof err) == 2,
           "attention rejects inf in q");
}

void all_cases() {
    for (int64_t T : {1, 2, 7, 64, 129})
        for (int64_t C : {1, 3, 255, 257, 768})
            for (int rev = 0; rev < 2; ++rev) scan_case(2, T, C, rev, (T + C + rev) % 2);
    attention_case(1, 1, 1, 1, 1, 1, 0, false, false);
    attention_case(2, 3, 5, 9, 8, 3, 1, false, true);
    attention_case(1, 2, 33, 70, 16, 16, 2, false, false);
    attention_case(1, 2, 70, 70, 16, 8, 3, true, false);
    attention_case(2, 1, 65, 65, 7, 5, 0, true, true);
    attention_case(1, 1, 130, 131, 4, 4, 1, false, true);
    // Ragged row blocks and key tiles (zero-padded tail tiles over the packed key panels), and
    // rows wider than one 1024-key tile.
    attention_case(1, 2, 41, 47, 24, 40, 1, false, false);
    attention_case(1, 1, 19, 51, 5, 33, 0, false, false);
    attention_case(1, 1, 37, 1100, 8, 8, 2, false, true);
    attention_case(1, 1, 9, 1027, 8, 8, 1, false, false);
    // Every register-tile remainder of the AVX2 (6-row) and AVX-512 (8-row) tilings, and head
    // sizes around the 8- and 16-column vectors.
    for (int64_t N : {2, 3, 5, 6, 7, 11, 13, 17, 31, 49})
        attention_case(1, 1, N, N, 32, 32, N % 2 ? 1 : 0, N % 3 == 0, false);
    for (int64_t Dv : {8, 15, 24, 48, 64}) attention_case(1, 1, 23, 29, Dv, Dv, 2, false, false);
    bad_inputs();
}

}  // namespace

// Runs every case on every instruction-set path this CPU can execute (or on the paths named on
// the command line).
int main(int argc, char** argv) {
    std::vector<std::string> paths;
    for (int i = 1; i < argc; ++i) paths.push_back(argv[i]);
    if (paths.empty()) {
        std::stringstream list(ef_cpu_isa_paths());
        for (std::string p; std::getline(list, p, ',');) paths.push_back(p);
    }
    for (const std::string& p : paths) {
        char err[256];
        if (ef_cpu_set_isa(p.c_str(), err, sizeof err) != 0) {
            std::printf("FAIL: path %s: %s\n", p.c_str(), err);
            ++failed;
            continue;
        }
        const int before = failed;
        all_cases();
        std::printf("path %s: %s\n", ef_cpu_isa(), failed == before ? "ok" : "FAILED");
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
