#include "engine/bounded_store.h"

#include <pthread.h>

namespace far {

BoundedStore::BoundedStore(c10::intrusive_ptr<c10d::Store> store) : st_(std::make_shared<State>()) {
  st_->store = std::move(store);
  thread_ = std::thread(loop, st_);
}

BoundedStore::~BoundedStore() {
  bool stuck;
  {
    std::lock_guard<std::mutex> lk(st_->mu);
    st_->stop = true;
    stuck = st_->busy || lost_;
  }
  st_->cv.notify_all();
  // A helper stuck in a dead connection's recv() never returns: joining it would hang the
  // destructor (and the interpreter's exit) instead of the store call.
  if (stuck)
    thread_.detach();
  else
    thread_.join();
}

void BoundedStore::submit(std::function<void(c10d::Store&)> task) {
  if (lost_) throw StoreLost("the store stopped answering earlier");
  {
    std::lock_guard<std::mutex> lk(st_->mu);
    st_->q.push_back(std::move(task));
  }
  st_->cv.notify_one();
}

std::future<void> BoundedStore::start(std::function<void(c10d::Store&)> f) {
  auto p = std::make_shared<std::promise<void>>();
  auto fut = p->get_future();
  submit([p, f = std::move(f)](c10d::Store& s) {
    try {
      f(s);
      p->set_value();
    } catch (...) {
      p->set_exception(std::current_exception());
    }
  });
  return fut;
}

void BoundedStore::loop(std::shared_ptr<State> st) {
  pthread_setname_np(pthread_self(), "far-store");
  std::unique_lock<std::mutex> lk(st->mu);
  for (;;) {
    st->cv.wait(lk, [&] { return st->stop || !st->q.empty(); });
    if (st->q.empty()) return;  // stopped, nothing left
    auto task = std::move(st->q.front());
    st->q.pop_front();
    st->busy = true;
    lk.unlock();
    task(*st->store);
    lk.lock();
    st->busy = false;
  }
}

}  // namespace far
