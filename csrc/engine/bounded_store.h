// Store round trips that cannot hang the engine. A TCPStore call on a connection whose other end
// vanished without a FIN or RST (a host's link taken down) blocks in recv() for as long as the
// store's own timeout, which is the group's (30 min by default): a watchdog or an abort path
// stuck there never reports anything. Here every call runs on one helper thread ("far-store")
// and the caller waits for it at most a bound of its choosing; a call that overruns marks the
// store lost, and it and every later call fail at once with StoreLost. The helper is left to its
// recv (detached at destruction), holding the store alive.
#pragma once
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace far {

struct StoreLost : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class BoundedStore {
 public:
  explicit BoundedStore(c10::intrusive_ptr<c10d::Store> store);
  ~BoundedStore();
  BoundedStore(const BoundedStore&) = delete;
  BoundedStore& operator=(const BoundedStore&) = delete;

  // f(store) on the helper thread; its result, or its exception, or StoreLost after `bound`.
  template <class F>
  auto call(F f, std::chrono::milliseconds bound) -> decltype(f(std::declval<c10d::Store&>())) {
    using R = decltype(f(std::declval<c10d::Store&>()));
    auto p = std::make_shared<std::promise<R>>();
    auto fut = p->get_future();
    submit([p, f](c10d::Store& s) mutable {
      try {
        if constexpr (std::is_void_v<R>) {
          f(s);
          p->set_value();
        } else {
          p->set_value(f(s));
        }
      } catch (...) {
        p->set_exception(std::current_exception());
      }
    });
    if (fut.wait_for(bound) != std::future_status::ready) {
      lost_ = true;
      throw StoreLost("the store did not answer within " + std::to_string(bound.count()) + " ms");
    }
    return fut.get();
  }

  // f(store) started on the helper thread; poll the returned future (the watchdog never waits).
  std::future<void> start(std::function<void(c10d::Store&)> f);

  bool lost() const { return lost_.load(); }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::function<void(c10d::Store&)>> q;
    bool stop = false, busy = false;
    c10::intrusive_ptr<c10d::Store> store;
  };
  void submit(std::function<void(c10d::Store&)> task);
  static void loop(std::shared_ptr<State> st);

  std::shared_ptr<State> st_;
  std::thread thread_;
  std::atomic<bool> lost_{false};
};

}  // namespace far
